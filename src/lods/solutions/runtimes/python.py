"""The `python` runtime: call a function shipped in the package, `file.py:function`.

The entry file is loaded as a submodule of a synthetic package named after the package
folder, the file and its SHA-256, so two versions with the same file names never share a
module; that package stands for the entry file's folder, so the entry file may import the
modules beside it relatively (`from . import helpers`), never by absolute name.
Loaded functions are cached per (package folder, file SHA-256).

The function takes the `RunContext` and returns a `RunResult`. `RuntimeErrorBase`
exceptions it raises pass through (the function decides transient or permanent), and so
does whatever `ctx.heartbeat()` raised (a cancelled job stays cancelled); any other
exception becomes a `PermanentRuntimeError` carrying its text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from lods.solutions.manifest import Manifest, PythonRuntimeSpec
from lods.solutions.runtimes.base import (
    PermanentRuntimeError,
    RunContext,
    RunResult,
    RuntimeErrorBase,
    TransientRuntimeError,
)

EntryFunction = Callable[[RunContext], object]

MODULE_PREFIX = "_lods_solution_"

_functions: dict[tuple[str, str], EntryFunction] = {}
_load_lock = threading.Lock()


def _python_spec(manifest: Manifest) -> PythonRuntimeSpec:
    spec = manifest.runtime
    if not isinstance(spec, PythonRuntimeSpec):
        raise PermanentRuntimeError(f"the package's runtime is {spec.kind!r}, not 'python'")
    return spec


def entry_file(package_dir: Path, entry_point: str) -> tuple[Path, Path, str]:
    """(resolved package folder, resolved entry file, function name) of `entry_point`.

    Refuses entry points whose file lies outside the package (`..`, absolute paths or
    symbolic links leading out), is not a `.py` file, or is missing.
    """
    file_part, _, function = entry_point.rpartition(":")
    if not file_part or not function.isidentifier():
        raise PermanentRuntimeError(f'entry point {entry_point!r} must look like "engine.py:run"')
    root = package_dir.resolve()
    path = (root / file_part).resolve()
    if not path.is_relative_to(root) or path == root:
        raise PermanentRuntimeError(f"entry point {entry_point!r} lies outside the package")
    if path.suffix != ".py":
        raise PermanentRuntimeError(f"entry point {entry_point!r} is not a .py file")
    if not path.is_file():
        raise PermanentRuntimeError(f"entry point file {file_part!r} is missing from the package")
    return root, path, function


def _drop_modules(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def _load(root: Path, path: Path, function: str, digest: str) -> EntryFunction:
    """Import the entry file under a name unique to (root, file, digest); return the function.

    The synthetic package stands for the entry file's folder, so the entry file may import
    the modules beside it relatively.
    """
    relative = path.relative_to(root).as_posix()
    seed = f"{root}\0{relative}\0{digest}".encode()
    package_name = MODULE_PREFIX + hashlib.sha256(seed).hexdigest()[:24]
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem)
    module_name = f"{package_name}.{stem}"
    try:
        if package_name not in sys.modules:
            package_spec = importlib.machinery.ModuleSpec(package_name, None, is_package=True)
            package_spec.submodule_search_locations = [str(path.parent)]
            sys.modules[package_name] = importlib.util.module_from_spec(package_spec)
        module = sys.modules.get(module_name) or _exec_module(module_name, path)
    except (Exception, SystemExit) as exc:
        _drop_modules(package_name)
        raise PermanentRuntimeError(
            f"the entry file {relative} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    target = getattr(module, function, None)
    if not callable(target):
        raise PermanentRuntimeError(f"the entry file {relative} has no function {function!r}")
    entry: EntryFunction = target
    return entry


def _exec_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no loader for {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # No __pycache__ inside the installed package: a .pyc there is a file the manifest does
    # not list, and the next load's integrity check would suspend the deployment. (Callers
    # hold `_load_lock`, so the flag is not raced by another loader of ours.)
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.dont_write_bytecode = previous
    return module


def load_entry_point(package_dir: Path, manifest: Manifest) -> EntryFunction:
    """The package's entry function, loaded once per (package folder, entry file SHA-256)."""
    spec = _python_spec(manifest)
    root, path, function = entry_file(package_dir, spec.entry_point)
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    listed = manifest.files.get(path.relative_to(root).as_posix())
    if listed is not None and listed != digest:
        raise PermanentRuntimeError(
            f"the entry file {path.name} does not match its SHA-256 in the manifest"
        )
    key = (f"{root}:{function}", digest)
    with _load_lock:
        if key not in _functions:
            _functions[key] = _load(root, path, function, digest)
        return _functions[key]


class PythonRuntime:
    """Runs a `python` solution version: the manifest's entry function, called with ctx."""

    def run(self, ctx: RunContext) -> RunResult:
        """Call the entry function and check that it returned a `RunResult`."""
        manifest: Manifest = ctx.manifest
        spec = _python_spec(manifest)
        if time.monotonic() > ctx.deadline:
            raise TransientRuntimeError("the run passed its deadline before it started")
        function = load_entry_point(ctx.package_dir, manifest)
        heartbeat_errors: list[BaseException] = []
        inner_heartbeat = ctx.heartbeat

        def heartbeat() -> None:
            try:
                inner_heartbeat()
            except BaseException as exc:
                heartbeat_errors.append(exc)
                raise

        try:
            result = function(dataclasses.replace(ctx, heartbeat=heartbeat))
        except RuntimeErrorBase:
            raise
        except (Exception, SystemExit) as exc:
            if heartbeat_errors:  # e.g. the job was cancelled: report that, not a failure
                raise heartbeat_errors[-1] from None
            raise PermanentRuntimeError(
                f"{spec.entry_point} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, RunResult):
            raise PermanentRuntimeError(
                f"{spec.entry_point} returned {type(result).__name__}, not a RunResult"
            )
        return result
