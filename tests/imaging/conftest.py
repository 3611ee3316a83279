"""Small synthetic DICOM objects for the imaging intake tests, made with pydicom."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from lods.imaging.store import BlobStore
from lods.runtime import Runtime


def make_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT-0001",
    patient_name: str = "Jensen^Karen",
    modality: str = "CR",
    size: int = 32,
    instance_number: int = 1,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = ComputedRadiographyImageStorage,
) -> Dataset:
    """Return a small 16-bit image with file meta, ready to save or send."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + ds.SOPInstanceUID[-6:]
    ds.Modality = modality
    ds.ReferringPhysicianName = "Hansen^Ole"
    ds.StudyDescription = "Thorax"
    ds.SeriesDescription = "PA"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.set_original_encoding(
        transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian
    )
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write `ds` as a Part-10 file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(data: bytes) -> bytes:
    """Return the data set bytes of a Part-10 file (everything after its file meta).

    Independent of Lods' own reader: the meta's group length says where it ends.
    """
    assert data[128:132] == b"DICM"
    group, element, vr, _length = struct.unpack_from("<HH2sH", data, 132)
    assert (group, element, vr) == (2, 0, b"UL")
    (meta_length,) = struct.unpack_from("<L", data, 140)
    return data[144 + meta_length :]


@dataclass
class StudyFiles:
    study_uid: str
    paths: list[Path]


def make_study(
    directory: Path, *, series: int = 2, per_series: int = 3, size: int = 32, patient: str = "P1"
) -> StudyFiles:
    """Write one study of `series` x `per_series` images to `directory`."""
    study_uid = generate_uid()
    paths = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = make_dataset(
                study_uid=study_uid,
                series_uid=series_uid,
                patient_id=patient,
                instance_number=i + 1,
                size=size,
                seed=s * 1000 + i,
                modality="CR" if s == 0 else "DX",
            )
            paths.append(save(ds, directory / f"{ds.SOPInstanceUID}.dcm"))
    return StudyFiles(study_uid, paths)


class DicomKit:
    """The helpers above, handed to tests as the `dicom` fixture (conftest is not importable)."""

    make_dataset = staticmethod(make_dataset)
    save = staticmethod(save)
    dataset_bytes = staticmethod(dataset_bytes)
    make_study = staticmethod(make_study)
    storescu = staticmethod(lambda *a, **k: storescu(*a, **k))

    @staticmethod
    def part10(ds: Dataset) -> bytes:
        """Return `ds` encoded as a Part-10 file."""
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


@pytest.fixture
def dicom() -> type[DicomKit]:
    return DicomKit


@pytest.fixture
def store(runtime: Runtime) -> BlobStore:
    return BlobStore.from_settings(runtime.settings)


@pytest.fixture
def site_id(runtime: Runtime) -> int:
    from lods.sites.service import create_site

    with runtime.sessions() as db, db.begin():
        return create_site(db, code="RH", name="Rigshospitalet", actor="test").id


def storescu(
    port: int,
    paths: list[Path],
    *,
    calling: str = "STORESCU",
    called: str = "LODS",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Send `paths` over one association with DCMTK storescu; return the finished process."""
    return subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            calling,
            "-aec",
            called,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def files_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "files"
    path.mkdir()
    yield path
