"""Send synthetic studies to a DICOM node the way a modality does: C-STORE over one
association per study, calling with the modality's own AE title."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from lods.demo.region import Hospital
from lods.synth.xray import BODY_PARTS, make_study, synthetic_patient

#: Status codes that mean "stored": success and the C-STORE warnings (PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class SendError(Exception):
    """The node could not be reached or refused the association."""


@dataclass(frozen=True)
class PlannedStudy:
    """A study to send: which hospital's modality sends it, and its images."""

    hospital: Hospital
    datasets: list[Dataset]

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
    `seed`), so their names and birth dates stay the same when the studies change.
    Images are `size`² pixels, or 1024² to 2048² when `size` is None.
    """
    if count < 1 or not hospitals:
        raise ValueError("plan at least one study for at least one hospital")
    planned = []
    for i in range(count):
        hospital = hospitals[i % len(hospitals)]
        patient = synthetic_patient(i + 1, seed=seed if patient_seed is None else patient_seed)
        datasets = make_study(
            seed * 1_009 + i,
            body_part=BODY_PARTS[i % len(BODY_PARTS)],
            modality=hospital.modality,
            patient=patient,
            when=now - timedelta(minutes=23 * (count - i)),
            institution=hospital.name,
            station=hospital.modality_ae,
            size=size,
        )
        planned.append(PlannedStudy(hospital=hospital, datasets=datasets))
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
            calling_ae=study.hospital.modality_ae,
        )
        for study in planned
    ]
