"""Small DICOM objects for the DICOMweb, rendering and viewer tests, built with pydicom.

Kept apart from `conftest.py` so tests import them by name.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def image(
    *,
    pixels: np.ndarray | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "0101501234",
    patient_name: str = "Østergård^Søren",
    study_date: str = "20240131",
    accession: str = "ACC0001",
    modality: str = "CR",
    description: str = "Thorax PA",
    referring: str = "Hansen^Ole",
    sop_class: str = ComputedRadiographyImageStorage,
    instance_number: int = 1,
    photometric: str = "MONOCHROME2",
    **attributes: object,
) -> Dataset:
    """Return an image data set with file meta (Explicit VR Little Endian)."""
    if pixels is None:
        pixels = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 4096
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = referring
    ds.StudyDescription = description
    ds.SeriesDescription = f"{modality} series"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    _set_pixels(ds, pixels, photometric)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, photometric: str) -> None:
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits if colour or bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()


def rgb_image(**kwargs: object) -> Dataset:
    """Return an 8-bit RGB secondary capture with a red left half and a blue right half."""
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, :15, 0] = 255
    pixels[:, 15:, 2] = 255
    return image(
        pixels=pixels,
        sop_class=SecondaryCaptureImageStorage,
        modality="OT",
        photometric="RGB",
        **kwargs,  # type: ignore[arg-type]
    )


def part10(ds: Dataset) -> bytes:
    """Return `ds` written as a Part-10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save(ds: Dataset, path: Path) -> Path:
    """Write `ds` as a Part-10 file at `path` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(part10(ds))
    return path


def multipart(parts: Iterable[bytes], boundary: str = "lods-test-boundary") -> bytes:
    """Return a STOW-RS body, each part `application/dicom`, as dicomweb-client builds it."""
    body = b"".join(
        b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
        for part in parts
    )
    return body + b"\r\n--" + boundary.encode() + b"--"


def stow_type(boundary: str = "lods-test-boundary") -> str:
    """Return the Content-Type header of a body made by `multipart`."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart_response(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """Return (Content-Type, content) of each part of a multipart/related response.

    Written independently of Lods' own parser, after RFC 2046.
    """
    boundary = next(
        p.split("=", 1)[1].strip('"')
        for p in (x.strip() for x in content_type.split(";"))
        if p.lower().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(b"\r\n" + delimiter)[0:]:
        chunk = chunk.removeprefix(delimiter)
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n"))
        )
        parts.append((headers.get("content-type", ""), content))
    return parts


def ingest(runtime: Any, ds: Dataset, *, site_id: int, channel: str = "stow") -> Any:
    """Store `ds` through the real intake, as STOW-RS would, and return the result."""
    from lods.imaging.service import ingest_part10
    from lods.imaging.store import BlobStore

    store = BlobStore.from_settings(runtime.settings)
    with runtime.sessions() as db, db.begin():
        return ingest_part10(
            db, store=store, data=part10(ds), channel=channel, source="test", site_id=site_id
        )
