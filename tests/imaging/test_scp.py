"""The DICOM node against real peers on loopback: DCMTK echoscu/storescu and pynetdicom SCUs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from pynetdicom import AE, _config
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import lods.imaging.scp as scp_module
from lods.imaging.ingest import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, PROCESSING_FAILURE
from lods.imaging.models import Instance, IntakeRejection, Series, Study
from lods.imaging.scp import DicomServer
from lods.imaging.store import BlobStore
from lods.runtime import Runtime
from lods.sites.models import UNASSIGNED_SITE_CODE, Site

OUT_OF_RESOURCES = 0xA700

# --- an in-process node -------------------------------------------------------------------


@dataclass
class Node:
    runtime: Runtime
    server: DicomServer
    port: int

    def count(self, model: Any = Instance) -> int:
        with self.runtime.sessions() as db:
            return int(db.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def start_node(sqlite_runtime: Runtime) -> Iterator[Callable[..., Node]]:
    """Start the DICOM node in this process; site TEST knows MODALITY and STORESCU."""
    from lods.sites.service import add_dicom_node, create_site

    with sqlite_runtime.sessions() as db, db.begin():
        site = create_site(db, code="TEST", name="Test Hospital", actor="test")
        for title in ("MODALITY", "STORESCU"):
            add_dicom_node(db, site_id=site.id, ae_title=title, kind="modality", actor="test")
    servers: list[DicomServer] = []

    def start(**overrides: Any) -> Node:
        settings = sqlite_runtime.settings.model_copy(update=overrides)
        rt = Runtime(
            settings=settings, engine=sqlite_runtime.engine, sessions=sqlite_runtime.sessions
        )
        server = DicomServer(rt)
        server.start()
        servers.append(server)
        return Node(rt, server, server.port)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    return start_node()


def send(
    port: int,
    items: list[Dataset | Path],
    *,
    calling: str = "MODALITY",
    called: str = "LODS",
    contexts: list[tuple[str, str]] | None = None,
) -> list[Dataset]:
    """Send `items` over one pynetdicom association; return each response status."""
    ae = AE(ae_title=calling)
    if contexts is None:
        contexts = sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in items})  # type: ignore[union-attr]
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not accepted"
    try:
        return [assoc.send_c_store(item) for item in items]
    finally:
        assoc.release()


def send_raw(port: int, path: Path, sop_class: str, syntax: str, **kw: Any) -> Dataset:
    """Send a file's data set bytes untouched, its request built from the file's meta."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return send(port, [path], contexts=[(sop_class, syntax)], **kw)[0]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def crafted_file(path: Path, meta_from: Dataset, body: bytes) -> Path:
    """Write a Part-10 file whose meta is `meta_from.file_meta` and whose data set is `body`."""
    buf = BytesIO()
    write_file_meta_info(buf, meta_from.file_meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body)
    return path


def echo_ok(port: int, calling: str = "MODALITY") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="LODS")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


# --- DCMTK against `lods serve` -------------------------------------------------------------


def _live_db(live_server: Any) -> Session:
    return Session(create_engine(live_server.database_url))


def test_echoscu_is_answered_with_success(live_server: Any) -> None:
    done = subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", "LODS", "127.0.0.1", str(live_server.dicom_port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_storescu_files_are_stored_with_their_data_set_bytes_unchanged(
    live_server: Any, dicom: Any, files_dir: Path
) -> None:
    study = dicom.make_study(files_dir, series=2, per_series=3)
    done = dicom.storescu(live_server.dicom_port, study.paths)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Received Store Response (Success)") == 6
    store = BlobStore(live_server.data_dir / "blobs", live_server.data_dir / "tmp")
    with _live_db(live_server) as db:
        rows = {i.sop_instance_uid: i for i in db.scalars(select(Instance))}
        assert len(rows) == 6
        for path in study.paths:
            sent = path.read_bytes()
            sop_uid = path.stem
            stored = store.read(rows[sop_uid].sha256)
            assert dicom.dataset_bytes(stored) == dicom.dataset_bytes(sent)
            assert rows[sop_uid].channel == "dicom" and rows[sop_uid].source == "STORESCU"
        db_study = db.scalar(select(Study))
        assert db_study is not None and db_study.study_uid == study.study_uid
        assert (db_study.num_series, db_study.num_instances) == (2, 6)
        site = db.get(Site, db_study.site_id)
        assert site is not None and site.code == "TEST"
        from lods.audit.models import AuditEvent

        received = db.scalars(select(AuditEvent).where(AuditEvent.action == "study.received")).all()
        assert [(e.actor, e.study_uid) for e in received] == [("dicom:STORESCU", study.study_uid)]


def test_unknown_calling_ae_is_rejected_and_nothing_is_stored(
    live_server: Any, dicom: Any, files_dir: Path
) -> None:
    study = dicom.make_study(files_dir, series=1, per_series=1)
    done = dicom.storescu(live_server.dicom_port, study.paths, calling="STRANGER")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr
    with _live_db(live_server) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 0


# --- association control ----------------------------------------------------------------------


def test_wrong_called_ae_is_rejected(node: Node, dicom: Any) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NOT_LODS")
    assert assoc.is_rejected


def test_unknown_calling_ae_lands_in_unassigned_when_accepted(
    start_node: Callable[..., Node], dicom: Any
) -> None:
    node = start_node(dicom_accept_unknown_ae=True)
    [status] = send(node.port, [dicom.make_dataset()], calling="STRANGER")
    assert status.Status == 0
    with node.runtime.sessions() as db:
        study = db.scalar(select(Study))
        assert study is not None
        site = db.get(Site, study.site_id)
        assert site is not None and site.code == UNASSIGNED_SITE_CODE


def test_node_added_while_running_is_let_in(node: Node) -> None:
    from lods.sites.service import add_dicom_node, get_site_by_code

    assert not echo_ok(node.port, calling="NEWMOD")
    with node.runtime.sessions() as db, db.begin():
        site = get_site_by_code(db, code="TEST")
        assert site is not None
        add_dicom_node(db, site_id=site.id, ae_title="NEWMOD", kind="modality", actor="test")
    deadline = time.monotonic() + 15
    while not echo_ok(node.port, calling="NEWMOD"):
        assert time.monotonic() < deadline, "a node added at run time was never let in"
        time.sleep(0.2)


# --- repeats and versions -----------------------------------------------------------------------


def test_repeated_identical_instance_is_a_no_op_success(node: Node, dicom: Any) -> None:
    ds = dicom.make_dataset()
    assert [s.Status for s in send(node.port, [ds])] == [0]
    assert [s.Status for s in send(node.port, [ds])] == [0]
    assert node.count() == 1
    with node.runtime.sessions() as db:
        assert db.scalar(select(Study.num_instances)) == 1


def test_changed_instance_becomes_a_new_version_and_the_old_is_kept(node: Node, dicom: Any) -> None:
    ds = dicom.make_dataset(seed=1)
    send(node.port, [ds])
    ds.PixelData = dicom.make_dataset(seed=2).PixelData
    [status] = send(node.port, [ds])
    assert status.Status == 0
    store = BlobStore.from_settings(node.runtime.settings)
    with node.runtime.sessions() as db:
        old, new = db.scalars(select(Instance).order_by(Instance.version)).all()
        assert (old.version, new.version) == (1, 2)
        assert old.superseded_at is not None and new.superseded_at is None
        assert store.exists(old.sha256) and store.exists(new.sha256)
        assert db.scalar(select(Series.num_instances)) == 1


# --- bad input ---------------------------------------------------------------------------------


def _check_refused(node: Node, status: Dataset, code: int, words: str) -> IntakeRejection:
    assert status.Status == code, f"0x{status.Status:04X} {status.get('ErrorComment')}"
    assert words in status.ErrorComment
    assert node.count() == 0
    with node.runtime.sessions() as db:
        [rejection] = db.scalars(select(IntakeRejection)).all()
    assert rejection.status == code and rejection.channel == "dicom"
    assert rejection.source == "MODALITY" and rejection.quarantine_path
    sidecar = Path(rejection.quarantine_path).with_suffix(".json")
    assert json.loads(sidecar.read_text())["status"] == f"0x{code:04X}"
    assert echo_ok(node.port), "the node stopped serving after a bad input"
    return rejection


def test_data_set_without_study_uid_is_refused_and_quarantined(node: Node, dicom: Any) -> None:
    ds = dicom.make_dataset()
    del ds.StudyInstanceUID
    [status] = send(node.port, [ds])
    rejection = _check_refused(node, status, DATASET_DOES_NOT_MATCH, "StudyInstanceUID")
    assert rejection.sop_instance_uid == ds.SOPInstanceUID
    kept = Path(rejection.quarantine_path or "").read_bytes()
    assert b"Jensen^Karen" in kept  # the data set as received


def test_data_set_without_sop_instance_uid_is_refused(
    node: Node, dicom: Any, tmp_path: Path
) -> None:
    ds = dicom.make_dataset()
    body = dicom.dataset_bytes(dicom.part10(ds))
    uid = ds.SOPInstanceUID.encode()
    body = body.replace(uid, b"9" * len(uid))  # the request still names the real UID
    path = crafted_file(tmp_path / "x.dcm", ds, body)
    status = send_raw(node.port, path, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    _check_refused(node, status, DATASET_DOES_NOT_MATCH, "SOP Instance UID")


def test_request_sop_class_differing_from_the_data_set_is_refused(
    node: Node, dicom: Any, tmp_path: Path
) -> None:
    ds = dicom.make_dataset()
    body = dicom.dataset_bytes(dicom.part10(ds))
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    path = crafted_file(tmp_path / "x.dcm", ds, body)
    status = send_raw(
        node.port, path, DigitalXRayImageStorageForPresentation, ds.file_meta.TransferSyntaxUID
    )
    _check_refused(node, status, DATASET_DOES_NOT_MATCH, "SOP Class UID")


def test_request_instance_uid_differing_from_the_data_set_is_refused(
    node: Node, dicom: Any, tmp_path: Path
) -> None:
    ds = dicom.make_dataset()
    body = dicom.dataset_bytes(dicom.part10(ds))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = crafted_file(tmp_path / "x.dcm", ds, body)
    status = send_raw(node.port, path, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    _check_refused(node, status, DATASET_DOES_NOT_MATCH, "SOP Instance UID")


def test_truncated_data_set_is_refused_and_others_are_unaffected(
    node: Node, dicom: Any, tmp_path: Path
) -> None:
    ds = dicom.make_dataset()
    body = dicom.dataset_bytes(dicom.part10(ds))[:-333]
    path = crafted_file(tmp_path / "x.dcm", ds, body)
    status = send_raw(node.port, path, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    _check_refused(node, status, CANNOT_UNDERSTAND, "truncated")
    [good] = send(node.port, [dicom.make_dataset()])
    assert good.Status == 0 and node.count() == 1


def test_garbage_data_set_is_refused(node: Node, dicom: Any, tmp_path: Path) -> None:
    ds = dicom.make_dataset()
    path = crafted_file(tmp_path / "x.dcm", ds, bytes(range(256)) * 64)
    status = send_raw(node.port, path, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    _check_refused(node, status, CANNOT_UNDERSTAND, "garbled")


def test_exception_in_intake_becomes_a_failure_status(
    node: Node, dicom: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(scp_module, "index_instance", broken)
    [status] = send(node.port, [dicom.make_dataset()])
    assert status.Status == PROCESSING_FAILURE and "internal error" in status.ErrorComment
    monkeypatch.undo()
    [status] = send(node.port, [dicom.make_dataset()])
    assert status.Status == 0


def test_database_failure_answers_out_of_resources(
    node: Node, dicom: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(scp_module, "index_instance", locked)
    monkeypatch.setattr(scp_module, "_DB_ATTEMPTS", 2)
    [status] = send(node.port, [dicom.make_dataset()])
    assert status.Status == OUT_OF_RESOURCES and "database" in status.ErrorComment


# --- concurrency and transfer syntaxes ---------------------------------------------------------


def test_parallel_associations_all_succeed_on_sqlite(node: Node, dicom: Any) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def sender(n: int) -> None:
        study_uid = generate_uid()
        datasets = [dicom.make_dataset(study_uid=study_uid, seed=n * 10 + i) for i in range(5)]
        statuses = send(node.port, datasets)
        with lock:
            results.extend(int(s.Status) for s in statuses)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [0] * 20
    assert node.count() == 20 and node.count(Study) == 4


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPGExtended.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_compressed_data_sets_are_stored_as_received(node: Node, dicom: Any, name: str) -> None:
    path = Path(get_testdata_file(name, download=False))  # type: ignore[arg-type]
    import pydicom

    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    status = send_raw(node.port, path, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assert status.Status == 0
    store = BlobStore.from_settings(node.runtime.settings)
    with node.runtime.sessions() as db:
        instance = db.scalar(select(Instance))
        assert instance is not None
        assert instance.transfer_syntax_uid == meta.TransferSyntaxUID
        stored = store.read(instance.sha256)
    assert dicom.dataset_bytes(stored) == dicom.dataset_bytes(path.read_bytes())


# --- large data sets are streamed to disk while they arrive -----------------------------------


def test_large_data_sets_streamed_to_disk_are_stored_byte_identical(
    node: Node, dicom: Any, files_dir: Path
) -> None:
    study = dicom.make_study(files_dir, series=1, per_series=3, size=1024)  # 2 MiB each
    done = dicom.storescu(node.port, study.paths, calling="STORESCU")
    assert done.returncode == 0, done.stderr
    store = BlobStore.from_settings(node.runtime.settings)
    with node.runtime.sessions() as db:
        rows = {i.sop_instance_uid: i for i in db.scalars(select(Instance))}
    assert len(rows) == 3
    for path in study.paths:
        row = rows[path.stem]
        stored = store.read(row.sha256)
        assert hashlib.sha256(stored).hexdigest() == row.sha256
        assert dicom.dataset_bytes(stored) == dicom.dataset_bytes(path.read_bytes())
        assert hashlib.sha256(dicom.dataset_bytes(stored)).hexdigest() == row.dataset_sha256
    again = dicom.storescu(node.port, study.paths, calling="STORESCU")
    assert again.returncode == 0 and node.count() == 3
    assert list(store.tmp_dir.iterdir()) == []


def test_large_data_set_differing_from_its_request_is_refused_and_not_kept(
    node: Node, dicom: Any, tmp_path: Path
) -> None:
    ds = dicom.make_dataset(size=1024)
    body = dicom.dataset_bytes(dicom.part10(ds))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = crafted_file(tmp_path / "x.dcm", ds, body)
    status = send_raw(node.port, path, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    _check_refused(node, status, DATASET_DOES_NOT_MATCH, "SOP Instance UID")
    store = BlobStore.from_settings(node.runtime.settings)
    assert list(store.tmp_dir.iterdir()) == []
    assert not any(p.is_file() for p in store.root.rglob("*"))
