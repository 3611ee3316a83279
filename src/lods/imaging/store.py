"""Content-addressed blob store: every stored file lives at `root/ab/cd/<sha256>`.

A blob is written to a temporary file in `tmp_dir` (same file system as `root`), flushed
and fsync'd, renamed into place and its directory fsync'd, so once `put_*` returns the
bytes survive a crash or power cut. A blob is never modified after it is written; writing
the same content twice is a no-op that keeps the first file. Blobs are read-only (0o444).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lods.config import Settings

_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobRef:
    """A stored blob: its SHA-256 (its address), size in bytes and path on disk."""

    sha256: str
    size: int
    path: Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_sha256(sha256: str) -> str:
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        raise ValueError(f"not a lower-case hex SHA-256: {sha256!r}")
    return sha256


class BlobStore:
    """Durable, content-addressed files under `root`; temporary files under `tmp_dir`."""

    def __init__(self, root: Path, tmp_dir: Path, quarantine_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.tmp_dir = Path(tmp_dir)
        #: Where refused inputs go (see `lods.imaging.quarantine`); beside the blobs by default.
        self.quarantine_dir = Path(quarantine_dir or self.root.parent / "quarantine")
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Directories known to exist durably; saves a mkdir and a parent fsync per put.
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        """Return the store of an installation (its `blob_dir` and `tmp_dir`)."""
        return cls(settings.blob_dir, settings.tmp_dir, settings.quarantine_dir)

    # reading -----------------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        """Return where the blob with this SHA-256 lives (whether or not it exists)."""
        _check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        """Return True when the blob is stored."""
        return self.path_for(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """Return the blob opened for binary reading; `FileNotFoundError` if absent."""
        return self.path_for(sha256).open("rb")

    def read(self, sha256: str) -> bytes:
        """Return the blob's bytes."""
        return self.path_for(sha256).read_bytes()

    # writing -----------------------------------------------------------------------------

    def new_tmp_path(self, suffix: str = ".tmp") -> Path:
        """Return a fresh path in `tmp_dir` for a file that will be `put_file`'d."""
        return self.tmp_dir / f"{os.getpid()}-{threading.get_ident()}-{os.urandom(6).hex()}{suffix}"

    def sweep_tmp(self, *, older_than: float = 3600.0) -> int:
        """Return how many stale temporary files (left by a crash) were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for path in self.tmp_dir.glob("*.tmp"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def stage(self, parts: Iterable[bytes | memoryview]) -> Path:
        """Return a temporary file holding `parts` concatenated, fsync'd (for `commit`)."""
        tmp = self.new_tmp_path()
        sink = _Sink(tmp)
        try:
            for part in parts:
                sink.write(part)
            sink.sync_and_close()
        except BaseException:
            sink.discard()
            raise
        return tmp

    def commit(self, tmp: Path, *, sha256: str) -> BlobRef:
        """Return the blob made by moving a staged file to its address (`sha256` of it).

        The staged file is consumed; when the blob already exists it is simply dropped.
        """
        try:
            return self._commit(tmp, _check_sha256(sha256), tmp.stat().st_size)
        finally:
            tmp.unlink(missing_ok=True)

    def put_parts(
        self, parts: Iterable[bytes | memoryview], *, sha256: str | None = None
    ) -> BlobRef:
        """Return the blob made of `parts` concatenated, written durably (no joined copy).

        A caller that has just hashed the same bytes passes `sha256`: an already stored
        blob is then not written again, and the bytes are not hashed a second time.
        """
        if sha256 is not None and self.exists(sha256):
            path = self.path_for(sha256)
            return BlobRef(sha256, path.stat().st_size, path)
        parts = list(parts)
        if sha256 is None:
            digest = hashlib.sha256()
            for part in parts:
                digest.update(part)
            sha256 = digest.hexdigest()
        return self.commit(self.stage(parts), sha256=sha256)

    def put_hashed(
        self, parts: Iterable[bytes | memoryview], *, body_from: int
    ) -> tuple[BlobRef, str]:
        """Return the blob of `parts` and the SHA-256 of its bytes from offset `body_from`.

        One pass: each block is hashed twice and written, so the bytes are read once.
        """
        digest, body_digest = hashlib.sha256(), hashlib.sha256()
        sink = _Sink(self.new_tmp_path(), digests=((digest, 0), (body_digest, body_from)))
        try:
            for part in parts:
                sink.write(part)
            sink.sync_and_close()
        except BaseException:
            sink.discard()
            raise
        return self.commit(sink.path, sha256=digest.hexdigest()), body_digest.hexdigest()

    def put_bytes(self, data: bytes | memoryview) -> BlobRef:
        """Return the blob holding `data`, written durably."""
        return self.put_parts([data])

    def put_file(self, tmp_path: Path) -> BlobRef:
        """Return the blob made from `tmp_path`, which is moved (renamed) into the store.

        `tmp_path` must be on the store's file system (use `new_tmp_path`); it is consumed:
        after the call it no longer exists, whether or not an identical blob was present.
        """
        tmp_path = Path(tmp_path)
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp_path.open("rb+", buffering=0) as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                os.fsync(fh.fileno())
            return self._commit(tmp_path, digest.hexdigest(), size)
        finally:
            tmp_path.unlink(missing_ok=True)

    def _commit(self, tmp: Path, sha256: str, size: int) -> BlobRef:
        final = self.path_for(sha256)
        if final.is_file() and final.stat().st_size == size:
            # Same content already stored durably; content addressing makes this a no-op.
            return BlobRef(sha256, size, final)
        self._ensure_dir(final.parent)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return BlobRef(sha256, size, final)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._dirs_lock:
            # The two fan-out levels below root; each made (or, on first sight in this
            # process, re-confirmed) durable by fsyncing its parent.
            for path in (directory.parent, directory):
                if path in self._known_dirs:
                    continue
                path.mkdir(exist_ok=True)
                fsync_dir(path.parent)
                self._known_dirs.add(path)


#: Unit of work: bytes are gathered into blocks of this size, then hashed and written.
_BLOCK = 1 << 20
#: Offsets, sizes and buffer addresses of O_DIRECT writes are multiples of this.
_ALIGN = 4096


#: Writes of blocks run here, so hashing the next block overlaps writing this one.
_IO = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lods-blob-io")


class _Sink:
    """A new file written sequentially and durably, hashed block by block as it is written.

    Bytes are gathered into one of two page-aligned 1 MiB buffers; each full block is fed
    to the digests (each skipping its first `skip` bytes of the file) and written at its
    offset on an I/O thread while the other buffer fills. With O_DIRECT (Linux) blocks go
    straight to the disk, so the final fsync has only metadata left; the last block is
    zero-padded to the alignment and the file truncated back to its size. Where O_DIRECT
    is refused, blocks go through the page cache and their write-back starts at once.
    Hashing and writing whole blocks releases the GIL for long stretches, which matters
    when the bytes arrive on another busy thread.
    """

    def __init__(self, path: Path, *, digests: Iterable[tuple[Any, int]] = ()) -> None:
        self.path = path
        self.size = 0
        self._digests = list(digests)
        self._written = 0  # bytes of the file already hashed and handed to a write
        self._fill = 0
        self._buffers = [mmap.mmap(-1, _BLOCK), mmap.mmap(-1, _BLOCK)]
        self._writes: list[Future[None] | None] = [None, None]
        self._current = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self.fd: int | None = None
        self._direct = bool(getattr(os, "O_DIRECT", 0))
        if self._direct:
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError:
                path.unlink(missing_ok=True)
                self._direct = False
        if self.fd is None:
            self.fd = os.open(path, flags, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`."""
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            buffer = self._buffers[self._current]
            n = min(len(view), _BLOCK - self._fill)
            buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == _BLOCK:
                self._emit()

    def _emit(self) -> None:
        """Hash the filled buffer, start writing it, and switch to the other buffer."""
        real, index = self._fill, self._current
        buffer = self._buffers[index]
        with memoryview(buffer) as block:
            for digest, skip in self._digests:
                start = max(0, skip - self._written)
                if start < real:
                    digest.update(block[start:real])
        if self._direct:
            padded = -(-real // _ALIGN) * _ALIGN
            buffer[real:padded] = bytes(padded - real)
        self._writes[index] = _IO.submit(self._write_block, index, real, self._written)
        self._written += real
        self._fill = 0
        self._current = 1 - index
        self._wait(self._current)  # the other buffer must be written before it refills

    def _wait(self, index: int) -> None:
        pending, self._writes[index] = self._writes[index], None
        if pending is not None:
            pending.result()

    def _write_block(self, index: int, real: int, offset: int) -> None:
        assert self.fd is not None
        length = -(-real // _ALIGN) * _ALIGN if self._direct else real
        with memoryview(self._buffers[index]) as block:
            try:
                self._pwrite_all(block[:length], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                # The file system took O_DIRECT at open but not for writing: go cached.
                self._direct = False
                flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                self._pwrite_all(block[:real], offset)
        if not self._direct and hasattr(os, "posix_fadvise"):
            # On Linux, DONTNEED on dirty pages starts their write-back without waiting.
            os.posix_fadvise(self.fd, offset, real, os.POSIX_FADV_DONTNEED)

    def _pwrite_all(self, view: memoryview, offset: int) -> None:
        assert self.fd is not None
        while view:
            count = os.pwrite(self.fd, view, offset)
            view, offset = view[count:], offset + count

    def sync_and_close(self) -> None:
        """Write what is buffered, fsync and close."""
        assert self.fd is not None
        try:
            if self._fill or not self._written:
                self._emit()
            self._wait(0)
            self._wait(1)
            if self._direct:
                os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        finally:
            self._close()

    def discard(self) -> None:
        """Close and delete the file."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        for index in (0, 1):
            # The file is being thrown away, or the error was already raised.
            with contextlib.suppress(OSError):
                self._wait(index)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        for buffer in self._buffers:
            if not buffer.closed:
                buffer.close()


@dataclass(frozen=True)
class Staged:
    """A durably written temporary file: SHA-256 of all of it and of the part after the prefix."""

    path: Path
    sha256: str
    body_sha256: str
    size: int
    prefix: bytes

    @property
    def body_size(self) -> int:
        return self.size - len(self.prefix)


class BlobWriter:
    """A blob written while its bytes arrive; a worker thread hashes and writes them.

    `write` (always from the same thread) gathers the buffers it is handed (which must
    not change afterwards) and passes them to the worker a MiB at a time; `finish` waits
    for the worker, fsyncs and returns the `Staged` file for `BlobStore.commit`; `abort`
    throws everything away. The file's hash covers `prefix` and the body; the body's hash
    covers what was written after the prefix.
    """

    def __init__(self, store: BlobStore, *, prefix: bytes = b"") -> None:
        self._digest = hashlib.sha256()
        self._body_digest = hashlib.sha256()
        self._prefix = prefix
        self._sink = _Sink(
            store.new_tmp_path(), digests=((self._digest, 0), (self._body_digest, len(prefix)))
        )
        self._batch: list[bytes | memoryview] = [prefix] if prefix else []
        self._batch_size = len(prefix)
        self._queue: queue.SimpleQueue[list[bytes | memoryview] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._aborted = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="lods-blob-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> None:
        """Queue `data` to be appended."""
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= _BLOCK:
            self._queue.put(self._batch)
            self._batch, self._batch_size = [], 0

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is not None or self._aborted:
                continue
            try:
                for chunk in batch:
                    self._sink.write(chunk)
            except BaseException as exc:  # handed to finish(); the worker drains on
                self._error = exc

    def end(self) -> None:
        """Say no more bytes will come, so the worker finishes without waiting for `finish`."""
        if self._ended:
            return
        self._ended = True
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._batch_size = [], 0
        self._queue.put(None)

    def _stop(self) -> None:
        self.end()
        self._thread.join()

    def finish(self) -> Staged:
        """Return the staged file once every queued byte is written and fsync'd."""
        self._stop()
        try:
            if self._error is not None:
                raise self._error
            self._sink.sync_and_close()
        except BaseException:
            self._sink.discard()
            raise
        return Staged(
            self._sink.path,
            self._digest.hexdigest(),
            self._body_digest.hexdigest(),
            self._sink.size,
            self._prefix,
        )

    def abort(self) -> None:
        """Stop and delete the file (no-op after `finish`)."""
        self._aborted = True
        self._stop()
        self._sink.discard()
