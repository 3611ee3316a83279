"""Reading a solution package (folder or .zip) and hashing its files.

Pure file handling, no database: `open_package(path)` yields a folder holding the
package (a safe extraction for a `.zip`), `package_problems(folder, manifest)` lists
every file that is missing, unlisted or differs from its SHA-256, and `write_hashes`
fills in the `files:` section for a vendor building a package.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from lods.solutions.manifest import MANIFEST_NAME, Manifest, ManifestError, parse_manifest

#: Refuse archives that would unpack to more than this (zip bombs).
MAX_PACKAGE_BYTES = 2 * 1024**3
MAX_PACKAGE_FILES = 10_000


class PackageError(ValueError):
    """The package cannot be installed; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_member(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        return None
    return path


def _extract_zip(archive: Path, into: Path) -> Path:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise PackageError([f"{archive.name} is not a valid .zip archive"]) from exc
    with zf:
        members = zf.infolist()
        if len(members) > MAX_PACKAGE_FILES:
            raise PackageError([f"the archive holds more than {MAX_PACKAGE_FILES} entries"])
        if sum(m.file_size for m in members) > MAX_PACKAGE_BYTES:
            raise PackageError(["the archive unpacks to more than 2 GiB"])
        for member in members:
            path = _safe_member(member.filename)
            if path is None:
                raise PackageError(
                    [f"archive entry {member.filename!r} points outside the package"]
                )
            if stat.S_ISLNK(member.external_attr >> 16):
                raise PackageError([f"archive entry {member.filename!r} is a symbolic link"])
            target = into.joinpath(*path.parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    # A package zipped with its folder: manifest one level down.
    if not (into / MANIFEST_NAME).exists():
        children = [p for p in into.iterdir() if p.is_dir()]
        if len(children) == 1 and (children[0] / MANIFEST_NAME).exists():
            return children[0]
    return into


@contextmanager
def open_package(path: Path) -> Iterator[Path]:
    """Yield a folder holding the package at `path` (a folder, or a .zip unpacked safely)."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise PackageError([f"{path} is neither a folder nor a file"])
    if path.suffix.lower() != ".zip":
        raise PackageError([f"{path.name}: a package is a folder or a .zip archive"])
    with tempfile.TemporaryDirectory(prefix="lods-package-") as tmp:
        yield _extract_zip(path, Path(tmp))


def read_manifest(folder: Path) -> tuple[Manifest, str]:
    """Return the parsed manifest and its text; raise `PackageError` with every problem."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageError([f"the package has no {MANIFEST_NAME}"])
    text = manifest_path.read_text(encoding="utf-8")
    try:
        return parse_manifest(text), text
    except ManifestError as exc:
        raise PackageError([f"{MANIFEST_NAME}: {p}" for p in exc.problems]) from exc


def package_files(folder: Path) -> dict[str, Path]:
    """Every regular file in the package except the manifest, by relative POSIX path."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = path  # reported as a problem by package_problems
        elif path.is_file() and rel != MANIFEST_NAME:
            found[rel] = path
    return found


def package_problems(folder: Path, files: dict[str, str]) -> list[str]:
    """Every difference between `folder` and the listed `files` hashes, in words."""
    problems: list[str] = []
    present = package_files(folder)
    for rel, found in present.items():
        if found.is_symlink():
            problems.append(f"{rel} is a symbolic link; packages hold regular files only")
        elif rel not in files:
            problems.append(f"{rel} is in the package but not listed in the manifest")
    for rel, expected in sorted(files.items()):
        listed = present.get(rel)
        if listed is None or listed.is_symlink():
            if listed is None:
                problems.append(f"{rel} is listed in the manifest but missing")
            continue
        actual = sha256_file(listed)
        if actual != expected:
            problems.append(
                f"{rel} does not match its SHA-256 "
                f"(expected {expected[:12]}…, found {actual[:12]}…)"
            )
    return problems


def write_hashes(folder: Path) -> dict[str, str]:
    """Fill the manifest's `files:` with the SHA-256 of every file in `folder` (vendor tool)."""
    manifest_path = folder / MANIFEST_NAME
    data: dict[str, Any] = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
    hashes = {
        rel: sha256_file(path)
        for rel, path in package_files(folder).items()
        if not path.is_symlink()
    }
    data["files"] = hashes
    manifest_path.write_text(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return hashes


def build_package(folder: Path, manifest: dict[str, Any], files: dict[str, bytes | Path]) -> Path:
    """Write a package folder: the given files plus a manifest listing their hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    data = dict(manifest)
    data["files"] = {rel: sha256_file(folder / rel) for rel in files}
    (folder / MANIFEST_NAME).write_text(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return folder
