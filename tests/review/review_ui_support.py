"""Helpers for the review UI and API tests: DX studies through the real intake, an
approved and deployed solution, and AI results stored as a finished job stores them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import update

from lods.auth.service import create_user
from lods.db import utcnow
from lods.findings.models import Finding
from lods.findings.service import replace_job_results
from lods.imaging.models import Study
from lods.imaging.service import ingest_part10
from lods.imaging.store import BlobStore
from lods.jobs import service as jobs
from lods.jobs.models import Job
from lods.runtime import Runtime
from lods.sites.service import create_site, get_site_by_code
from lods.solutions.models import SolutionVersion
from lods.solutions.runtimes.base import Box, CodeRef, FindingResult, RunResult
from lods.solutions.service import get_deployment, manifest_of
from support import PASSWORD
from support_solutions import SPOT_CODE, install_approve_deploy, python_package

ROWS, COLS = 192, 256
SPOT = CodeRef(**SPOT_CODE)


@dataclass(frozen=True)
class StudyRef:
    id: int
    uid: str
    sop_uids: list[str]


def dx_part10(
    *,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    patient_name: str,
    accession: str,
    number: int = 1,
) -> bytes:
    """A 12-bit DX hand radiograph of an adult (inside the test solution's intended use)."""
    pixels = np.full((ROWS, COLS), 300, dtype=np.uint16)
    pixels[40:150, 20:120] = 1200
    pixels[60:116, 150:206] = 3600
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientAge = "045Y"
    ds.PatientSex = "F"
    ds.StudyDate = "20261129"
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyDescription = "Hand, left"
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "L"
    ds.InstanceNumber = number
    ds.SeriesNumber = 1
    ds.PixelSpacing = [0.15, 0.15]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.Rows, ds.Columns = ROWS, COLS
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def site(rt: Runtime, code: str, name: str | None = None) -> int:
    """The id of site `code`, created when missing."""
    with rt.sessions() as db, db.begin():
        found = get_site_by_code(db, code=code)
        if found is not None:
            return found.id
        return create_site(db, code=code, name=name or code, actor="test").id


def add_study(
    rt: Runtime,
    *,
    site_id: int,
    patient_id: str,
    patient_name: str = "Hansen^Karen",
    accession: str | None = None,
    waiting: timedelta | None = None,
    images: int = 1,
) -> StudyRef:
    """Store a DX study through the intake; `waiting` back-dates its arrival."""
    study_uid, series_uid = generate_uid(), generate_uid()
    store = BlobStore.from_settings(rt.settings)
    sops = []
    for n in range(1, images + 1):
        data = dx_part10(
            study_uid=study_uid,
            series_uid=series_uid,
            patient_id=patient_id,
            patient_name=patient_name,
            accession=accession or f"ACC-{patient_id}",
            number=n,
        )
        with rt.sessions() as db, db.begin():
            result = ingest_part10(
                db, store=store, data=data, channel="stow", source="test", site_id=site_id
            )
            assert result.ok and result.sop_instance_uid, result.reason
            sops.append(result.sop_instance_uid)
    with rt.sessions() as db, db.begin():
        study = db.query(Study).filter(Study.study_uid == study_uid).one()
        if waiting is not None:
            db.execute(
                update(Study)
                .where(Study.id == study.id)
                .values(first_received_at=utcnow() - waiting)
            )
        return StudyRef(study.id, study_uid, sops)


def deploy(rt: Runtime, folder: Path, *, site_code: str, mode: str = "live") -> int:
    """Install, approve and deploy the test solution at `site_code`; return the deployment."""
    _version, deployment = install_approve_deploy(
        rt, python_package(folder, solution_id=f"org.test.{folder.name}"), site=site_code, mode=mode
    )
    return deployment


def heatmap_png() -> bytes:
    grid = np.zeros((48, 64), dtype=np.uint8)
    grid[15:29, 37:52] = 255
    out = io.BytesIO()
    Image.fromarray(grid).save(out, format="PNG")
    return out.getvalue()


def add_result(
    rt: Runtime,
    *,
    deployment_id: int,
    study: StudyRef,
    findings: list[tuple[float, tuple[float, float, float, float] | None]],
    heatmap_on_first: bool = False,
) -> list[int]:
    """Store an AI result of the deployment on `study` as a finished job does; return the
    finding ids (in the order given). Each finding is (score, box on the first image)."""
    store = BlobStore.from_settings(rt.settings)
    heatmaps = {0: store.put_bytes(heatmap_png()).sha256} if heatmap_on_first else None
    with rt.sessions() as db, db.begin():
        deployment = get_deployment(db, deployment_id=deployment_id)
        version = db.get(SolutionVersion, deployment.version_fk)
        assert version is not None
        job_id = jobs.enqueue(
            db,
            version_id=version.id,
            deployment_id=deployment_id,
            study_id=study.id,
            inputs={"mode": deployment.mode, "sop_instance_uids": study.sop_uids},
            max_attempts=1,
            timeout_seconds=5,
        )
        db.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
        result = RunResult(
            findings=[
                FindingResult(
                    code=SPOT,
                    score=score,
                    sop_instance_uid=study.sop_uids[0],
                    box=Box(*box) if box else None,
                )
                for score, box in findings
            ]
        )
        replace_job_results(
            db,
            job_id=job_id,
            study_id=study.id,
            version=version,
            deployment=deployment,
            mode=deployment.mode,
            manifest=manifest_of(version),
            result=result,
            heatmaps=heatmaps,
        )
        db.flush()
        rows = db.query(Finding).filter(Finding.job_fk == job_id).order_by(Finding.id).all()
        return [f.id for f in rows]


def add_radiologist(rt: Runtime, username: str, full_name: str) -> None:
    from lods.auth.models import Role

    with rt.sessions() as db, db.begin():
        create_user(
            db,
            username=username,
            roles=[Role.RADIOLOGIST],
            password=PASSWORD,
            full_name=full_name,
            actor="test",
        )
