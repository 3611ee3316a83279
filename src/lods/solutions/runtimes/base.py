"""The one contract every runtime implements (`onnx`, `python`, `dicom_node`).

A job worker hands a runtime a `RunContext`: the verified package folder, the parsed
manifest, the study and the images the intended-use matcher let through (each as a
path to its stored Part-10 file), a deadline and a heartbeat. The runtime returns a
`RunResult`: raw findings (code, score, optional location) and an optional study-level
score. It never decides certainty, never writes to the database and never marks
anything final: the platform turns scores into certainty with the manifest's operating
points and stores every finding as preliminary.

Errors: raise `TransientRuntimeError` for what may pass on a retry (a vendor appliance
down, a time-out waiting for its answer), `PermanentRuntimeError` for what will not
(an image the model cannot read, a package that does not fit its runtime). Any other
exception is treated as permanent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class RuntimeErrorBase(Exception):
    """A runtime could not produce a result; `transient` says whether a retry may help."""

    transient = False


class TransientRuntimeError(RuntimeErrorBase):
    """May succeed on a later attempt (peer down, time-out)."""

    transient = True


class PermanentRuntimeError(RuntimeErrorBase):
    """Will fail again on the same input; no retry."""


@dataclass(frozen=True)
class CodeRef:
    """A coded concept: `scheme` is "SCT" (SNOMED CT), "DCM", or a local scheme ("99LODS")."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class InputImage:
    """One image the solution may read: a current instance of the study."""

    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
    number_of_frames: int = 1
    #: Header facts used by pre-processing (e.g. "laterality": "L", "view_position": "CC").
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates of the stored image (column, row)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class FindingResult:
    """One raw finding as a runtime reports it (no certainty: the platform assigns it)."""

    code: CodeRef
    score: float
    label: str = ""
    sop_instance_uid: str | None = None
    frame: int | None = None
    box: Box | None = None
    #: Optional heatmap as PNG bytes, the size of the image it belongs to (or scaled).
    heatmap_png: bytes | None = None


@dataclass
class RunResult:
    findings: list[FindingResult] = field(default_factory=list)
    #: Study-level score on the manifest's score range; None = max of finding scores.
    study_score: float | None = None
    #: Free details kept with the job (timings, vendor identifiers); JSON-serialisable.
    details: dict[str, Any] = field(default_factory=dict)


#: Waits for a vendor appliance's answer: (study_uid, calling_ae, since_epoch, timeout_s)
#: -> list of Part-10 file paths received from that AE for that study since then.
InboxWaiter = Callable[[str, str, float, float], list[Path]]


@dataclass(frozen=True)
class RunContext:
    job_id: int
    #: The installed, just re-verified package folder (read-only by convention).
    package_dir: Path
    #: The parsed manifest (`lods.solutions.manifest.Manifest`).
    manifest: Any
    study_uid: str
    images: Sequence[InputImage]
    #: time.monotonic() value after which the runtime should give up (TransientRuntimeError).
    deadline: float
    #: Call now and then during long work; raises when the job was cancelled meanwhile.
    heartbeat: Callable[[], None] = lambda: None
    #: For `dicom_node`: Lods' own DICOM node (AE title, host, port) the vendor answers to.
    local_ae_title: str = "LODS"
    #: For `dicom_node`: how to wait for the vendor's answer (supplied by the worker).
    inbox: InboxWaiter | None = None
    #: Subject of non-imaging input (vitals, sensor events) for the `python` runtime.
    payload: dict[str, Any] = field(default_factory=dict)


class SolutionRuntime(Protocol):
    """What `lods.solutions.runtimes.get_runtime(kind)` returns."""

    def run(self, ctx: RunContext) -> RunResult: ...
