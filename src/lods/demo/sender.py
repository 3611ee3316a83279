"""Send synthetic studies to a DICOM node the way a modality does: C-STORE over one
association per study, calling with the modality's own AE title."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from lods.demo.region import Hospital
from lods.synth.fractures import FractureSpec, random_fracture
from lods.synth.mammo import make_exam
from lods.synth.xray import BODY_PARTS, SyntheticPatient, make_study, synthetic_patient

#: Fracture kinds of the demo's adult patients (buckle fractures are children's).
FRACTURE_KINDS = ("displaced", "oblique", "transverse", "hairline")
#: The screening exams: a lesion in every other one.
SCREENING_FINDINGS: tuple[str | None, ...] = ("spiculated_mass", None, "round_mass", None)
#: Status codes that mean "stored": success and the C-STORE warnings (PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class SendError(Exception):
    """The node could not be reached or refused the association."""


@dataclass(frozen=True)
class PlannedStudy:
    """A study to send: which hospital's modality sends it, and its images."""

    hospital: Hospital
    datasets: list[Dataset]
    #: The sending node's AE title; default the hospital's X-ray room.
    calling_ae: str = ""

    @property
    def sender(self) -> str:
        return self.calling_ae or self.hospital.modality_ae

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


@dataclass
class SendResult:
    """What the node answered for one study: stored SOP Instance UIDs and failures."""

    calling_ae: str
    study_uid: str
    stored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _limb_study(
    seed: int,
    hospital: Hospital,
    patient: SyntheticPatient,
    body_part: str,
    when: datetime,
    size: int | None,
    fracture: FractureSpec | None,
) -> list[Dataset]:
    return make_study(
        seed,
        body_part=body_part,
        modality=hospital.modality,
        patient=patient,
        when=when,
        institution=hospital.name,
        station=hospital.modality_ae,
        size=size,
        fracture=fracture,
    )


def plan_studies(
    hospitals: tuple[Hospital, ...] | list[Hospital],
    *,
    count: int,
    seed: int,
    now: datetime,
    patient_seed: int | None = None,
    size: int | None = None,
) -> list[PlannedStudy]:
    """Return `count` synthetic studies spread over the hospitals and body parts.

    Study times fall in the hours before `now`, newest last, so the demo's worklist looks
    like this morning's. Patients `DEMO0001…` are drawn from `patient_seed` (default
    `seed`), so their names and birth dates stay the same when the studies change. Every
    other study shows a fracture (displaced, oblique, transverse or hairline).
    Images are `size`² pixels, or 1024² to 2048² when `size` is None.
    """
    if count < 1 or not hospitals:
        raise ValueError("plan at least one study for at least one hospital")
    planned = []
    for i in range(count):
        hospital = hospitals[i % len(hospitals)]
        patient = synthetic_patient(i + 1, seed=seed if patient_seed is None else patient_seed)
        body_part = BODY_PARTS[i % len(BODY_PARTS)]
        study_seed = seed * 1_009 + i
        when = now - timedelta(minutes=23 * (count - i))
        datasets = None
        if i % 2 == 1:  # every other study has a fracture, for the AI to find
            rng = np.random.default_rng([study_seed, 0xF2])
            kind = FRACTURE_KINDS[(i // 2) % len(FRACTURE_KINDS)]
            try:
                fracture = random_fracture(rng, kind=kind, body_part=body_part)
                datasets = _limb_study(
                    study_seed, hospital, patient, body_part, when, size, fracture
                )
            except ValueError:  # the fracture fell outside a view: send it without
                datasets = None
        if datasets is None:
            datasets = _limb_study(study_seed, hospital, patient, body_part, when, size, None)
        planned.append(PlannedStudy(hospital=hospital, datasets=datasets))
    return planned


def plan_screening(
    hospitals: tuple[Hospital, ...] | list[Hospital],
    *,
    count: int,
    seed: int,
    size: int | None = None,
) -> list[PlannedStudy]:
    """Return `count` four-view screening exams, spread over the hospitals' mammography
    units; about half have a lesion (mass or calcifications) for the AI to find."""
    planned = []
    for i in range(count):
        hospital = hospitals[i % len(hospitals)]
        exam = make_exam(
            seed * 7_919 + i,
            number=i + 1,
            size=size,
            finding=SCREENING_FINDINGS[i % len(SCREENING_FINDINGS)],
            age=50 + (7 * i) % 20,  # the screening programme's age group
        )
        for ds in exam.datasets:
            ds.InstitutionName = hospital.name
            ds.StationName = hospital.mammo_ae
        planned.append(
            PlannedStudy(hospital=hospital, datasets=exam.datasets, calling_ae=hospital.mammo_ae)
        )
    return planned


def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    """Return once a TCP connection to host:port succeeds; raise TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing answers on {host}:{port}") from exc
            time.sleep(0.2)


def send_study(
    datasets: list[Dataset],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float = 60.0,
) -> SendResult:
    """Return the node's answers after sending the datasets over one association."""
    if not datasets:
        raise ValueError("a study to send has at least one dataset")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise SendError(
            f"{called_ae}@{host}:{port} did not accept an association from {calling_ae}"
        )
    result = SendResult(calling_ae=calling_ae, study_uid=str(datasets[0].StudyInstanceUID))
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code in STORED_STATUSES:
                result.stored.append(str(ds.SOPInstanceUID))
            else:
                shown = "no answer" if code is None else f"status 0x{code:04X}"
                comment = status.get("ErrorComment", "")
                result.failed.append(f"{ds.SOPInstanceUID}: {shown} {comment}".strip())
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def send_planned(
    planned: list[PlannedStudy], *, host: str, port: int, called_ae: str
) -> list[SendResult]:
    """Return the results of sending every planned study from its hospital's modality."""
    return [
        send_study(
            study.datasets,
            host=host,
            port=port,
            called_ae=called_ae,
            calling_ae=study.sender,
        )
        for study in planned
    ]
