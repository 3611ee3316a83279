"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from lods.imaging.store import BlobStore, BlobWriter


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", tmp_path / "tmp")


def test_put_bytes_stores_content_at_its_sha256(blobs: BlobStore) -> None:
    data = b"DICM" * 1000
    ref = blobs.put_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert ref.sha256 == sha and ref.size == len(data)
    assert ref.path == blobs.root / sha[:2] / sha[2:4] / sha
    assert blobs.exists(sha)
    with blobs.open(sha) as fh:
        assert fh.read() == data


def test_put_bytes_twice_keeps_one_file_and_no_temporaries(blobs: BlobStore) -> None:
    first = blobs.put_bytes(b"same")
    second = blobs.put_bytes(b"same")
    assert first == second
    assert [p for p in blobs.root.rglob("*") if p.is_file()] == [first.path]
    assert list(blobs.tmp_dir.iterdir()) == []


def test_put_parts_equals_the_joined_bytes(blobs: BlobStore) -> None:
    parts = [b"a" * 10, memoryview(b"b" * 5000), b""]
    ref = blobs.put_parts(parts)
    assert ref.path.read_bytes() == b"a" * 10 + b"b" * 5000
    assert ref.sha256 == hashlib.sha256(ref.path.read_bytes()).hexdigest()


def test_put_parts_with_known_hash_skips_an_existing_blob(blobs: BlobStore) -> None:
    ref = blobs.put_bytes(b"payload")
    again = blobs.put_parts([b"not written"], sha256=ref.sha256)
    assert again == ref
    assert ref.path.read_bytes() == b"payload"


def test_put_file_moves_the_file_into_the_store(blobs: BlobStore) -> None:
    tmp = blobs.new_tmp_path()
    tmp.write_bytes(b"x" * 3_000_000)
    ref = blobs.put_file(tmp)
    assert not tmp.exists()
    assert ref.path.read_bytes() == b"x" * 3_000_000
    assert ref.sha256 == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_stored_blob_is_read_only(blobs: BlobStore) -> None:
    ref = blobs.put_bytes(b"immutable")
    assert not os.stat(ref.path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_path_for_refuses_a_name_that_is_not_a_sha256(blobs: BlobStore) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        blobs.path_for("../../etc/passwd")
    with pytest.raises(ValueError):
        blobs.path_for("A" * 64)


def test_open_of_a_missing_blob_raises(blobs: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        blobs.open("0" * 64)
    assert not blobs.exists("0" * 64)


def test_sweep_tmp_removes_only_stale_temporary_files(blobs: BlobStore) -> None:
    stale = blobs.new_tmp_path()
    stale.write_bytes(b"left by a crash")
    os.utime(stale, (0, 0))
    fresh = blobs.new_tmp_path()
    fresh.write_bytes(b"being written now")
    assert blobs.sweep_tmp(older_than=60) == 1
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (1 << 20) + 123, 3 * (1 << 20)])
def test_staged_file_has_exactly_the_bytes_written(blobs: BlobStore, size: int) -> None:
    data = os.urandom(size)
    tmp = blobs.stage([data[: size // 3], memoryview(data)[size // 3 :]])
    assert tmp.read_bytes() == data


def test_blob_writer_streams_a_prefix_and_body_into_a_blob(blobs: BlobStore) -> None:
    body = os.urandom(2_500_000)
    writer = BlobWriter(blobs, prefix=b"PREFIX")
    for start in range(0, len(body), 131_066):
        writer.write(memoryview(body)[start : start + 131_066])
    staged = writer.finish()
    assert staged.sha256 == hashlib.sha256(b"PREFIX" + body).hexdigest()
    assert staged.body_sha256 == hashlib.sha256(body).hexdigest()
    assert (staged.size, staged.body_size, staged.prefix) == (len(body) + 6, len(body), b"PREFIX")
    ref = blobs.commit(staged.path, sha256=staged.sha256)
    assert ref.path.read_bytes() == b"PREFIX" + body
    assert list(blobs.tmp_dir.iterdir()) == []


def test_blob_writer_abort_leaves_nothing_behind(blobs: BlobStore) -> None:
    writer = BlobWriter(blobs, prefix=b"x")
    writer.write(b"y" * 5_000_000)
    writer.abort()
    assert list(blobs.tmp_dir.iterdir()) == []
    assert not any(p.is_file() for p in blobs.root.rglob("*"))
