"""The vendor inbox: DICOM objects an AI appliance sends back to Lods' DICOM node.

The calling AE titles of approved `dicom_node` solutions (their `answer_ae_title`, by
default the appliance's own AE title) are allowed to associate; what they send is
stored in the blob store and filed as a `VendorAnswer` instead of joining the clinical
study, so an appliance's SR never re-triggers routing and is read only by the job that
waits for it (correlated by Study Instance UID, calling AE and time).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lods.imaging.service import Prepared
from lods.solutions.manifest import DicomNodeRuntimeSpec, parse_manifest
from lods.solutions.models import SolutionVersion, VendorAnswer, VersionState


def answer_ae_titles(db: Session) -> frozenset[str]:
    """Calling AE titles of the appliances of approved `dicom_node` solution versions."""
    texts = db.scalars(
        select(SolutionVersion.manifest_text).where(
            SolutionVersion.runtime_kind == "dicom_node",
            SolutionVersion.state == VersionState.APPROVED.value,
        )
    )
    titles = set()
    for text in texts:
        spec = parse_manifest(text).runtime
        if isinstance(spec, DicomNodeRuntimeSpec):
            titles.add(spec.answer_ae)
    return frozenset(titles)


def file_answer(db: Session, *, prepared: Prepared, calling_ae: str) -> VendorAnswer:
    header = prepared.header
    answer = VendorAnswer(
        calling_ae=calling_ae,
        study_uid=header.study_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        sha256=prepared.blob.sha256,
        size=prepared.blob.size,
        extra={"modality": header.modality, "series_uid": header.series_uid},
    )
    db.add(answer)
    db.flush()
    return answer
