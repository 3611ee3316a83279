"""Runtimes that execute a solution version: `onnx`, `python` and `dicom_node`.

Each implements `lods.solutions.runtimes.base.SolutionRuntime`; `get_runtime(kind)`
imports the one asked for, so a worker that never runs ONNX never loads ONNX Runtime.
"""

from __future__ import annotations

from importlib import import_module

from lods.solutions.runtimes.base import SolutionRuntime

_MODULES = {
    "onnx": ("lods.solutions.runtimes.onnx", "OnnxRuntime"),
    "python": ("lods.solutions.runtimes.python", "PythonRuntime"),
    "dicom_node": ("lods.solutions.runtimes.dicom_node", "DicomNodeRuntime"),
}
_instances: dict[str, SolutionRuntime] = {}


def get_runtime(kind: str) -> SolutionRuntime:
    """The process-wide runtime for `kind` (runtimes cache per verified version inside)."""
    if kind not in _MODULES:
        raise KeyError(f"unknown runtime kind {kind!r}; known: {sorted(_MODULES)}")
    if kind not in _instances:
        module_name, class_name = _MODULES[kind]
        _instances[kind] = getattr(import_module(module_name), class_name)()
    return _instances[kind]
