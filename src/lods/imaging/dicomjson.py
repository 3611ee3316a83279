"""The DICOM JSON Model (PS3.18 Annex F): search results, STOW-RS replies and metadata.

Pure functions: they take rows or data sets and URLs, and return JSON-ready dicts.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from lods.imaging.browse import InstanceRow
from lods.imaging.models import Instance, Patient, Series, Study
from lods.imaging.query import ATTRIBUTES

DICOM_JSON = "application/dicom+json"
_PIXEL_TAGS = {0x7FE00010: "OB", 0x7FE00008: "OF", 0x7FE00009: "OD"}


def element(vr: str, value: Any) -> dict[str, Any]:
    """Return one DICOM JSON attribute; a None or empty value gives an empty attribute."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": str(v)} for v in values]
    elif vr == "DA":
        values = [v.strftime("%Y%m%d") if isinstance(v, date) else str(v) for v in values]
    elif vr in ("IS", "US", "UL", "SL", "SS"):
        values = [int(v) for v in values]
    return {"vr": vr, "Value": values}


@dataclass(frozen=True)
class Urls:
    """Builds retrieve URLs under one DICOMweb root such as `http://host/dicom-web`."""

    root: str

    def study(self, study_uid: str) -> str:
        return f"{self.root}/studies/{study_uid}"

    def series(self, study_uid: str, series_uid: str) -> str:
        return f"{self.study(study_uid)}/series/{series_uid}"

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{self.series(study_uid, series_uid)}/instances/{sop_uid}"


def _study_values(study: Study, patient: Patient, urls: Urls) -> dict[str, Any]:
    return {
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "InstanceAvailability": "ONLINE",
        "ModalitiesInStudy": [m for m in study.modalities.split("\\") if m],
        "ReferringPhysicianName": study.referring_physician,
        "StudyDescription": study.description,
        "PatientName": patient.name,
        "PatientID": patient.patient_id,
        "IssuerOfPatientID": patient.issuer,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
        "StudyInstanceUID": study.study_uid,
        "StudyID": study.study_id,
        "NumberOfStudyRelatedSeries": study.num_series,
        "NumberOfStudyRelatedInstances": study.num_instances,
        "RetrieveURL": urls.study(study.study_uid),
    }


def _series_values(study_uid: str, se: Series, urls: Urls) -> dict[str, Any]:
    return {
        "Modality": se.modality,
        "SeriesDescription": se.description,
        "BodyPartExamined": se.body_part,
        "SeriesInstanceUID": se.series_uid,
        "SeriesNumber": se.series_number,
        "NumberOfSeriesRelatedInstances": se.num_instances,
        "RetrieveURL": urls.series(study_uid, se.series_uid),
    }


def _instance_values(study_uid: str, series_uid: str, inst: Instance, urls: Urls) -> dict[str, Any]:
    return {
        "SOPClassUID": inst.sop_class_uid,
        "SOPInstanceUID": inst.sop_instance_uid,
        "AvailableTransferSyntaxUID": inst.transfer_syntax_uid,
        "InstanceNumber": inst.instance_number,
        "NumberOfFrames": inst.number_of_frames,
        "Rows": inst.rows,
        "Columns": inst.columns,
        "RetrieveURL": urls.instance(study_uid, series_uid, inst.sop_instance_uid),
    }


def row_values(row: InstanceRow, urls: Urls) -> dict[str, Any]:
    """Return the values Lods indexes for a search result row, by DICOM keyword."""
    study_uid = row.study.study_uid
    values = _study_values(row.study, row.patient, urls)
    if row.series is not None:
        values.update(_series_values(study_uid, row.series, urls))
        if row.instance is not None:
            values.update(_instance_values(study_uid, row.series.series_uid, row.instance, urls))
    return values


def search_result(values: dict[str, Any], keywords: Iterable[str]) -> dict[str, Any]:
    """Return one QIDO-RS result: the attributes `keywords`, sorted by tag."""
    out = {ATTRIBUTES[k].tag: element(ATTRIBUTES[k].vr, values.get(k)) for k in keywords}
    return dict(sorted(out.items()))


# --- STOW-RS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPart:
    """The outcome of one STOW-RS part."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    retrieve_url: str | None = None  # set when stored
    failure_reason: int | None = None  # DICOM status when refused
    warning_reason: int | None = None
    study_uid: str | None = None  # set when stored


def stow_response(parts: Iterable[StoredPart], *, study_url: str | None) -> dict[str, Any]:
    """Return the STOW-RS response data set (PS3.18 10.5.3.1) in DICOM JSON."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for part in parts:
        item = {
            "00081150": element("UI", part.sop_class_uid),
            "00081155": element("UI", part.sop_instance_uid),
        }
        if part.failure_reason is not None:
            item["00081197"] = element("US", part.failure_reason)
            failed.append(item)
            continue
        item["00081190"] = element("UR", part.retrieve_url)
        if part.warning_reason is not None:
            item["00081196"] = element("US", part.warning_reason)
        referenced.append(item)
    response: dict[str, Any] = {"00081190": element("UR", study_url)}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        response["00081199"] = {"vr": "SQ", "Value": referenced}
    return response


# --- metadata ------------------------------------------------------------------------------------


def read_metadata(path: Path) -> tuple[Dataset, int | None]:
    """Return a stored file's data set without its pixel data, and the pixel data tag.

    The pixel data is not read (it can be gigabytes): reading stops before it and the
    next tag is peeked to learn whether, and which, pixel data element follows.
    """
    with path.open("rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is not None and ts.is_deflated:
            full = pydicom.dcmread(path)
            tag = next((t for t in _PIXEL_TAGS if t in full), None)
            return ds, tag
        head = fh.read(4)
    if len(head) < 4:
        return ds, None
    big_endian = ts is not None and not ts.is_little_endian
    group, elem = struct.unpack(">HH" if big_endian else "<HH", head)
    tag = (group << 16) | elem
    return ds, tag if tag in _PIXEL_TAGS else None


def _element_paths(ds: Dataset, prefix: str = "") -> dict[int, str]:
    """Return id(element) → path (`TAG` or `SEQ/index/TAG`) for every element, nested too."""
    paths: dict[int, str] = {}
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        paths[id(elem)] = path
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                paths.update(_element_paths(item, f"{path}/{index}/"))
    return paths


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def metadata(
    ds: Dataset, *, pixel_tag: int | None, bulk_url: str, transfer_syntax_uid: str
) -> dict[str, Any]:
    """Return an instance's metadata in DICOM JSON with bulk data as BulkDataURI.

    Binary values above 1 KiB, and the pixel data always, are referenced under `bulk_url`
    (`<bulk_url>/<path>`) instead of inlined.
    """
    paths = _element_paths(ds)

    def bulk_uri(elem: DataElement) -> str:
        return f"{bulk_url}/{paths.get(id(elem), f'{elem.tag:08X}')}"

    body = ds.to_json_dict(
        bulk_data_threshold=1024, bulk_data_element_handler=bulk_uri, suppress_invalid_tags=True
    )
    if pixel_tag is not None:
        body[f"{pixel_tag:08X}"] = {
            "vr": _PIXEL_TAGS[pixel_tag],
            "BulkDataURI": f"{bulk_url}/{pixel_tag:08X}",
        }
    body["00083002"] = element("UI", transfer_syntax_uid)
    try:
        json.dumps(body, allow_nan=False)
    except ValueError:
        body = _finite(body)  # DICOM JSON has no NaN or infinity
    return dict(sorted(body.items()))


def find_bulk_element(ds: Dataset, path: str) -> DataElement:
    """Return the element a bulk data path (`TAG` or `SEQ/index/TAG`...) names.

    Raises KeyError when the path does not name an element of `ds`.
    """
    parts = path.strip("/").split("/")
    current: Dataset = ds
    try:
        for step in range(0, len(parts) - 1, 2):
            current = current[int(parts[step], 16)].value[int(parts[step + 1])]
        found: DataElement = current[int(parts[-1], 16)]
    except (ValueError, IndexError, TypeError, AttributeError):
        raise KeyError(path) from None
    return found
