"""The intake service on SQLite and PostgreSQL: store, index, repeat, version, refuse."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import func, select

from lods.imaging.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    IMPLEMENTATION_CLASS_UID,
    IntakeError,
    file_meta,
    read_header,
    split_part10,
)
from lods.imaging.models import Instance, IntakeRejection, Patient, Series, Study
from lods.imaging.service import ingest_dataset, ingest_part10
from lods.imaging.store import BlobStore
from lods.runtime import Runtime


def _ingest(runtime: Runtime, store: BlobStore, site_id: int, data: bytes | Path):  # type: ignore[no-untyped-def]
    with runtime.sessions() as db, db.begin():
        return ingest_part10(
            db, store=store, data=data, channel="import", source="test", site_id=site_id
        )


def test_ingest_part10_stores_the_file_as_received_and_indexes_it(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    ds = dicom.make_dataset(patient_id="P-77", patient_name="Nielsen^Bo")
    data = dicom.part10(ds)
    result = _ingest(runtime, store, site_id, data)
    assert (result.outcome, result.dicom_status) == ("stored", 0)
    with runtime.sessions() as db:
        inst = db.get(Instance, result.instance_id)
        assert inst is not None
        assert store.read(inst.sha256) == data
        assert inst.sha256 == hashlib.sha256(data).hexdigest()
        assert inst.dataset_sha256 == hashlib.sha256(dicom.dataset_bytes(data)).hexdigest()
        assert (inst.rows, inst.columns, inst.version, inst.channel) == (32, 32, 1, "import")
        study = db.scalar(select(Study).where(Study.study_uid == ds.StudyInstanceUID))
        assert study is not None and study.site_id == site_id
        assert (study.num_series, study.num_instances, study.modalities) == (1, 1, "CR")
        assert study.accession_number == ds.AccessionNumber
        assert str(study.study_date) == "2024-01-31" and study.stable_at is None
        patient = db.get(Patient, study.patient_fk)
        assert patient is not None and (patient.patient_id, patient.name) == ("P-77", "Nielsen^Bo")


def test_ingest_part10_of_identical_bytes_is_a_no_op_success(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    data = dicom.part10(dicom.make_dataset())
    first = _ingest(runtime, store, site_id, data)
    again = _ingest(runtime, store, site_id, data)
    assert again.outcome == "duplicate" and again.dicom_status == 0
    assert again.instance_id == first.instance_id
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
        assert db.scalar(select(Study.num_instances)) == 1


def test_ingest_of_changed_bytes_makes_a_new_version_and_keeps_the_old(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    ds = dicom.make_dataset(seed=1)
    old = _ingest(runtime, store, site_id, dicom.part10(ds))
    ds.PixelData = dicom.make_dataset(seed=2).PixelData
    new = _ingest(runtime, store, site_id, dicom.part10(ds))
    assert (new.outcome, new.version) == ("new_version", 2)
    with runtime.sessions() as db:
        rows = db.scalars(select(Instance).order_by(Instance.version)).all()
        assert [r.version for r in rows] == [1, 2]
        assert rows[0].superseded_at is not None and rows[1].superseded_at is None
        assert rows[0].id == old.instance_id and store.exists(rows[0].sha256)
        assert rows[0].sha256 != rows[1].sha256
        assert db.scalar(select(Study.num_instances)) == 1
        assert db.scalar(select(Series.num_instances)) == 1


def test_ingest_counts_series_instances_and_modalities(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    study_uid = pydicom.uid.generate_uid()
    series = [pydicom.uid.generate_uid(), pydicom.uid.generate_uid()]
    for i in range(5):
        ds = dicom.make_dataset(
            study_uid=study_uid, series_uid=series[i % 2], modality=("CR", "DX")[i % 2], seed=i
        )
        assert _ingest(runtime, store, site_id, dicom.part10(ds)).outcome == "stored"
    with runtime.sessions() as db:
        study = db.scalar(select(Study))
        assert study is not None
        assert (study.num_series, study.num_instances, study.modalities) == (2, 5, "CR\\DX")
        counts = sorted(db.scalars(select(Series.num_instances)))
        assert counts == [2, 3]


def test_ingest_dataset_writes_a_lods_file_meta_before_the_received_bytes(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    ds = dicom.make_dataset(transfer_syntax=ImplicitVRLittleEndian)
    raw = dicom.dataset_bytes(dicom.part10(ds))
    with runtime.sessions() as db, db.begin():
        result = ingest_dataset(
            db,
            store=store,
            dataset=raw,
            transfer_syntax_uid=ImplicitVRLittleEndian,
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            channel="dicom",
            source="MODALITY",
            site_id=site_id,
        )
    assert result.outcome == "stored"
    with runtime.sessions() as db:
        inst = db.get(Instance, result.instance_id)
        assert inst is not None
        stored = store.read(inst.sha256)
    assert dicom.dataset_bytes(stored) == raw
    meta = pydicom.dcmread(BytesIO(stored)).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert pydicom.dcmread(BytesIO(stored)).PatientID == ds.PatientID


def test_file_meta_is_deterministic(runtime: Runtime) -> None:
    a = file_meta(
        sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2"
    )
    b = file_meta(
        sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2"
    )
    assert a == b and a[128:132] == b"DICM" and len(a) % 2 == 0


def _rejections(runtime: Runtime) -> list[IntakeRejection]:
    with runtime.sessions() as db:
        return list(db.scalars(select(IntakeRejection)))


def test_ingest_refuses_a_data_set_without_study_uid_and_quarantines_it(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    ds = dicom.make_dataset()
    del ds.StudyInstanceUID
    data = dicom.part10(ds)
    result = _ingest(runtime, store, site_id, data)
    assert (result.outcome, result.dicom_status) == ("rejected", DATASET_DOES_NOT_MATCH)
    assert "StudyInstanceUID" in result.reason
    [rejection] = _rejections(runtime)
    assert rejection.status == DATASET_DOES_NOT_MATCH
    assert rejection.sop_instance_uid == ds.SOPInstanceUID
    assert rejection.quarantine_path is not None
    kept = Path(rejection.quarantine_path)
    assert kept.read_bytes() == data
    sidecar = json.loads(kept.with_suffix(".json").read_text())
    assert sidecar["status"] == "0xA900" and "StudyInstanceUID" in sidecar["reason"]
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 0


def test_ingest_refuses_a_truncated_data_set(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    data = dicom.part10(dicom.make_dataset())[:-100]
    result = _ingest(runtime, store, site_id, data)
    assert (result.outcome, result.dicom_status) == ("rejected", CANNOT_UNDERSTAND)
    assert "truncated" in result.reason
    assert len(_rejections(runtime)) == 1


def test_ingest_refuses_a_file_whose_meta_disagrees_with_its_data_set(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    ds = dicom.make_dataset()
    body = dicom.dataset_bytes(dicom.part10(ds))
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta = BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    data = b"\0" * 128 + b"DICM" + meta.getvalue() + body
    result = _ingest(runtime, store, site_id, data)
    assert (result.outcome, result.dicom_status) == ("rejected", DATASET_DOES_NOT_MATCH)
    assert "SOP Class UID" in result.reason


def test_ingest_dataset_refuses_an_instance_uid_differing_from_the_request(
    runtime: Runtime, store: BlobStore, site_id: int, dicom: Any
) -> None:
    ds = dicom.make_dataset()
    with runtime.sessions() as db, db.begin():
        result = ingest_dataset(
            db,
            store=store,
            dataset=dicom.dataset_bytes(dicom.part10(ds)),
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid="1.2.3.4.5",
            channel="dicom",
            source="MODALITY",
            site_id=site_id,
        )
    assert (result.outcome, result.dicom_status) == ("rejected", DATASET_DOES_NOT_MATCH)
    [rejection] = _rejections(runtime)
    assert Path(rejection.quarantine_path or "").suffix == ".raw"


def test_ingest_refuses_bytes_that_are_not_part10(
    runtime: Runtime, store: BlobStore, site_id: int
) -> None:
    result = _ingest(runtime, store, site_id, b"hello, not DICOM" * 20)
    assert (result.outcome, result.dicom_status) == ("rejected", CANNOT_UNDERSTAND)


# read_header across encodings (no database) ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("CT_small.dcm", 128),  # explicit VR little endian
        ("MR_small_implicit.dcm", 64),
        ("MR_small_bigendian.dcm", 64),
        ("image_dfl.dcm", 512),  # deflated
        ("MR_small_RLE.dcm", 64),
        ("JPEG2000.dcm", 1024),
        ("SC_rgb_jpeg_dcmtk.dcm", 100),
        ("JPEGLSNearLossless_08.dcm", None),  # no StudyInstanceUID: refused
    ],
)
def test_read_header_reads_every_transfer_syntax_without_decoding(
    name: str, rows: int | None, dicom: Any
) -> None:
    data = Path(get_testdata_file(name, download=False)).read_bytes()  # type: ignore[arg-type]
    meta = split_part10(data)
    dataset = memoryview(data)[meta.dataset_offset :]
    reference = pydicom.dcmread(get_testdata_file(name, download=False), stop_before_pixels=True)
    if rows is None:
        with pytest.raises(IntakeError) as info:
            read_header(dataset, meta.transfer_syntax_uid)
        assert info.value.status == DATASET_DOES_NOT_MATCH
        return
    header = read_header(dataset, meta.transfer_syntax_uid)
    assert header.rows == rows
    assert header.sop_instance_uid == reference.SOPInstanceUID
    assert header.study_uid == reference.StudyInstanceUID
    assert header.patient_name == str(reference.get("PatientName", ""))


def test_read_header_finds_a_truncated_deflate_stream() -> None:
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = raw.compress(b"\x08\x00\x16\x00UI\x04\x001.2\x00") + raw.flush()
    with pytest.raises(IntakeError) as info:
        read_header(body[:-3], "1.2.840.10008.1.2.1.99")
    assert info.value.status == CANNOT_UNDERSTAND


def test_read_header_refuses_garbage() -> None:
    with pytest.raises(IntakeError) as info:
        read_header(bytes(range(256)) * 4, "1.2.840.10008.1.2.1")
    assert info.value.status == CANNOT_UNDERSTAND


def test_read_header_walks_undefined_length_sequences(dicom: Any) -> None:
    ds = dicom.make_dataset(transfer_syntax=ExplicitVRBigEndian)
    seq_item = pydicom.Dataset()
    seq_item.CodeValue = "123"
    ds.ProcedureCodeSequence = [seq_item]
    ds["ProcedureCodeSequence"].is_undefined_length = True
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    header = read_header(dicom.dataset_bytes(data), ExplicitVRBigEndian)
    assert header.rows == 32 and header.sop_instance_uid == ds.SOPInstanceUID
    # cutting the sequence delimiter off breaks the structure
    dset = dicom.dataset_bytes(data)
    pixel_tag = struct.pack(">HH", 0x7FE0, 0x0010)
    cut = dset.index(pixel_tag)
    with pytest.raises(IntakeError):
        read_header(dset[: cut - 8], ExplicitVRBigEndian)


def test_saved_file_round_trip_helper(tmp_path: Path, dicom: Any) -> None:
    path = dicom.save(dicom.make_dataset(), tmp_path / "a.dcm")
    assert pydicom.dcmread(path).Rows == 32
