"""The solution package manifest (`manifest.yaml`): schema, loading and plain-words errors.

A package is a folder (or a `.zip` of one) holding `manifest.yaml` and the files it
lists with their SHA-256. The manifest says what the solution is (id, name, version,
vendor, regulatory facts), what it may be used for (`intended_use`), how it runs
(`runtime`), what it outputs (finding codes, score range, operating points), where
data goes (`data_egress`) and how long a run may take (`limits`).

Everything here is pure: `parse_manifest(text)` returns a `Manifest` or raises
`ManifestError` whose `problems` name each bad field in words an administrator can act on.
"""

from __future__ import annotations

import re
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_NAME = "manifest.yaml"
SOLUTION_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{2,99}$")
VERSION = re.compile(r"^\d+(\.\d+){1,3}([-+][0-9A-Za-z.-]+)?$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestError(ValueError):
    """The manifest is missing, unreadable or invalid; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# --- regulatory -------------------------------------------------------------------------


class RegulatoryStatus(StrEnum):
    CE_MARKED = "ce_marked"
    DEMONSTRATION = "demonstration"


class Regulatory(_Strict):
    status: RegulatoryStatus
    #: MDR risk class: I, IIa, IIb or III.
    ce_class: Literal["I", "IIa", "IIb", "III"] | None = None
    #: Four-digit notified body number (required for class IIa and above).
    notified_body: str | None = None
    udi_di: str | None = None
    #: Shown with every result of the solution.
    statement: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Regulatory:
        if self.status is RegulatoryStatus.CE_MARKED:
            if self.ce_class is None:
                raise ValueError("a CE-marked solution must state its ce_class (I, IIa, IIb, III)")
            if self.ce_class != "I" and not self.notified_body:
                raise ValueError(f"CE class {self.ce_class} requires the notified_body number")
            if self.notified_body and not re.fullmatch(r"\d{4}", self.notified_body):
                raise ValueError("notified_body must be the body's four-digit number")
        elif self.ce_class or self.notified_body or self.udi_di:
            raise ValueError(
                "a demonstration solution cannot carry CE class, notified body or UDI-DI"
            )
        return self

    def summary(self) -> str:
        if self.status is RegulatoryStatus.DEMONSTRATION:
            return "Demonstration, not a medical device"
        parts = [f"CE-marked medical device, class {self.ce_class}"]
        if self.notified_body:
            parts.append(f"notified body {self.notified_body}")
        if self.udi_di:
            parts.append(f"UDI-DI {self.udi_di}")
        return ", ".join(parts)


# --- intended use -----------------------------------------------------------------------


class InputKind(StrEnum):
    DICOM_STUDY = "dicom-study"
    VITALS = "vitals"
    SENSOR_EVENTS = "sensor-events"


class AgeRange(_Strict):
    min_years: float | None = Field(default=None, ge=0)
    #: Inclusive upper bound (69 means "up to and including 69 years").
    max_years: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AgeRange:
        low, high = self.min_years, self.max_years
        if low is not None and high is not None and low > high:
            raise ValueError("age min_years is above max_years")
        return self


class View(_Strict):
    """One required view: laterality (L/R/B/U) and view position (e.g. CC, MLO)."""

    laterality: str
    view_position: str


class Exclusion(_Strict):
    """A header fact that rules an input out, e.g. series_description contains "implant".

    `field` is one of the image facts (`body_part`, `view_position`, `laterality`,
    `image_type`, `series_description`, `study_description`, `manufacturer`, `modality`,
    `sop_class_uid`); `any_of` are values (case-insensitive; `*` wildcards allowed);
    `reason` is what a clinician reads when it applies.
    """

    field: Literal[
        "body_part",
        "view_position",
        "laterality",
        "image_type",
        "series_description",
        "study_description",
        "manufacturer",
        "modality",
        "sop_class_uid",
    ]
    any_of: list[str] = Field(min_length=1)
    reason: str


class IntendedUse(_Strict):
    """Who and what the solution may be used on. Empty lists mean "no restriction"."""

    #: The purpose in plain words (shown on the catalogue and with every result).
    summary: str = Field(min_length=10)
    input_kind: InputKind
    modalities: list[str] = []
    sop_classes: list[str] = []
    #: DICOM defined terms for Body Part Examined (CS), e.g. HAND, WRIST, BREAST.
    body_parts: list[str] = []
    view_positions: list[str] = []
    lateralities: list[str] = []
    #: Views that must all be present among the eligible images (e.g. the 4 mammography views).
    required_views: list[View] = []
    age: AgeRange | None = None
    #: DICOM Patient's Sex values: F, M, O.
    sexes: list[Literal["F", "M", "O"]] = []
    min_rows: int | None = Field(default=None, ge=1)
    min_columns: int | None = Field(default=None, ge=1)
    #: Largest acceptable pixel spacing (coarser images are out of use), in mm.
    max_pixel_spacing_mm: float | None = Field(default=None, gt=0)
    exclusions: list[Exclusion] = []
    #: Patient facts a clinician records (vitals / sensor-events solutions) that rule a
    #: patient out, e.g. ["pregnant"] for NEWS2.
    excluded_patient_flags: list[str] = []
    #: Known limits, in plain words (shown beside results).
    limitations: list[str] = []

    @field_validator("modalities", "body_parts", "view_positions", "lateralities")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]

    @model_validator(mode="after")
    def _fits_kind(self) -> IntendedUse:
        imaging = (
            self.modalities
            or self.sop_classes
            or self.body_parts
            or self.view_positions
            or self.lateralities
            or self.required_views
            or self.min_rows
            or self.min_columns
            or self.max_pixel_spacing_mm
        )
        if self.input_kind is not InputKind.DICOM_STUDY and imaging:
            raise ValueError(
                f"imaging criteria make no sense for input_kind {self.input_kind.value}"
            )
        if self.input_kind is InputKind.DICOM_STUDY and self.excluded_patient_flags:
            raise ValueError("excluded_patient_flags apply to vitals and sensor-events input")
        if self.input_kind is InputKind.DICOM_STUDY and not self.modalities:
            raise ValueError("a dicom-study solution must list its modalities")
        return self


# --- runtimes -----------------------------------------------------------------------------


class Window(_Strict):
    center: float
    width: float = Field(gt=0)


class Normalise(_Strict):
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


class OnnxPreprocess(_Strict):
    """How an image becomes the model's input tensor (float32, N×C×H×W)."""

    #: Which frames of a multi-frame image: the first, the middle one, or each frame.
    frames: Literal["first", "middle", "all"] = "first"
    #: "header": the image's own VOI window (first value), else min–max;
    #: "minmax": the pixel range; or a fixed window {center, width}.
    window: Literal["header", "minmax"] | Window = "header"
    #: Show MONOCHROME1 images as MONOCHROME2 (bright = dense) before the window.
    invert_monochrome1: bool = True
    #: Target [height, width] in pixels.
    resize: tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]]
    #: Keep the aspect ratio and pad (letterbox) instead of stretching.
    keep_aspect: bool = True
    #: Mirror right-side images so every image faces the same way (mammography).
    flip_to_left: bool = False
    #: Applied to values scaled to 0..1.
    normalise: Normalise = Normalise()
    channels: Literal[1, 3] = 1


class OnnxPostprocess(_Strict):
    #: Output holding one score per finding: shape (N, len(classes)).
    scores_output: str
    #: Optional output holding a heatmap per finding: shape (N, len(classes), h, w).
    heatmap_output: str | None = None
    #: Activation applied to raw outputs before they are scores in 0..1.
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    heatmap_activation: Literal["none", "sigmoid"] = "none"
    #: Heatmap cells at or above this value form boxes (connected regions).
    heatmap_threshold: float = Field(default=0.5, ge=0, le=1)
    #: Boxes smaller than this fraction of the image area are dropped.
    min_box_fraction: float = Field(default=0.0005, ge=0, le=1)
    max_boxes: int = Field(default=5, ge=0, le=100)
    #: Optional ascending edges that turn the activated score p into the integer
    #: 1 + (number of edges ≤ p), e.g. nine edges for a screening score 1–10 whose bins
    #: each hold ~10 % of normal exams. The manifest's score_range must then be [1, n+1].
    score_bins: list[float] | None = Field(default=None, min_length=1, max_length=99)

    @field_validator("score_bins")
    @classmethod
    def _ascending(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(b <= a for a, b in pairwise(value)):
            raise ValueError("score_bins must be strictly ascending")
        return value


class OnnxRuntimeSpec(_Strict):
    kind: Literal["onnx"]
    #: The model file inside the package.
    model: str
    #: Input name; default: the model's only input.
    input_name: str | None = None
    #: Finding keys (from outputs.findings) in the order of the model's score outputs.
    classes: list[str] = Field(min_length=1)
    preprocess: OnnxPreprocess
    postprocess: OnnxPostprocess
    #: Threads ONNX Runtime may use inside one worker process.
    intra_op_threads: int = Field(default=1, ge=1, le=64)


class PythonRuntimeSpec(_Strict):
    kind: Literal["python"]
    #: "file.py:function" inside the package; the function takes a RunContext and
    #: returns a RunResult (see lods.solutions.runtimes.base).
    entry_point: str
    #: Passed to the function as ctx.manifest.runtime.options.
    options: dict[str, Any] = {}

    @field_validator("entry_point")
    @classmethod
    def _entry(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_./-]+\.py:[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError('entry_point must look like "engine.py:run"')
        return value


class DicomNodeRuntimeSpec(_Strict):
    kind: Literal["dicom_node"]
    #: The appliance's DICOM node (where Lods sends the study by C-STORE).
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(min_length=1, max_length=16)
    #: The calling AE title the appliance uses when it sends its results back to Lods.
    answer_ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    #: Seconds to wait for the appliance's answer after the study was sent.
    answer_timeout_seconds: float = Field(default=120.0, gt=0)
    #: Seconds for the C-STORE association (connect, each response).
    network_timeout_seconds: float = Field(default=30.0, gt=0)

    @property
    def answer_ae(self) -> str:
        return self.answer_ae_title or self.ae_title


RuntimeSpec = Annotated[
    OnnxRuntimeSpec | PythonRuntimeSpec | DicomNodeRuntimeSpec, Field(discriminator="kind")
]


# --- outputs, egress, limits --------------------------------------------------------------


class Code(_Strict):
    scheme: str = Field(pattern=r"^[A-Z0-9]{2,16}$")
    value: str = Field(min_length=1, max_length=64)
    meaning: str = Field(min_length=1, max_length=200)


class OperatingPoints(_Strict):
    """A score ≥ `sure` is a sure finding, ≥ `doubtful` a doubtful one, else none."""

    sure: float
    doubtful: float

    @model_validator(mode="after")
    def _ordered(self) -> OperatingPoints:
        if self.doubtful > self.sure:
            raise ValueError("operating point doubtful must not be above sure")
        return self


class FindingOutput(_Strict):
    key: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    code: Code
    label: str
    #: Overrides the solution's operating points for this finding.
    operating_points: OperatingPoints | None = None


class StudyResultLabels(_Strict):
    positive: str = "Finding"
    uncertain: str = "Uncertain"
    negative: str = "No finding"


class Outputs(_Strict):
    findings: list[FindingOutput] = Field(min_length=1)
    score_range: tuple[float, float] = (0.0, 1.0)
    operating_points: OperatingPoints
    study_result: StudyResultLabels = StudyResultLabels()

    @model_validator(mode="after")
    def _consistent(self) -> Outputs:
        low, high = self.score_range
        if low >= high:
            raise ValueError("score_range must be [low, high] with low < high")
        keys = [f.key for f in self.findings]
        if len(set(keys)) != len(keys):
            raise ValueError("finding keys must be unique")
        for points in [self.operating_points] + [
            f.operating_points for f in self.findings if f.operating_points
        ]:
            for value in (points.sure, points.doubtful):
                if not low <= value <= high:
                    raise ValueError(
                        f"operating point {value} is outside score_range {list(self.score_range)}"
                    )
        return self

    def finding(self, key: str) -> FindingOutput:
        for item in self.findings:
            if item.key == key:
                return item
        raise KeyError(key)

    def points_for(self, key: str) -> OperatingPoints:
        own = self.finding(key).operating_points
        return own or self.operating_points


class DataEgress(_Strict):
    """Where data goes: "none" (stays inside the hospital) or an external destination."""

    kind: Literal["none", "external"]
    destination: str | None = None
    pseudonymise: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DataEgress:
        if self.kind == "external" and not self.destination:
            raise ValueError("external data egress must name its destination")
        if self.kind == "none" and (self.destination or self.pseudonymise):
            raise ValueError('data_egress "none" takes no destination or pseudonymise')
        return self


class Limits(_Strict):
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    max_attempts: int = Field(default=3, ge=1, le=10)


class Manifest(_Strict):
    id: str
    name: str = Field(min_length=1, max_length=200)
    version: str
    vendor: str = Field(min_length=1, max_length=200)
    description: str = ""
    regulatory: Regulatory
    intended_use: IntendedUse
    runtime: RuntimeSpec
    outputs: Outputs
    data_egress: DataEgress
    limits: Limits = Limits()
    #: Every file of the package (relative POSIX path) with its SHA-256 (lower-case hex).
    files: dict[str, str] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not SOLUTION_ID.fullmatch(value):
            raise ValueError("id must be 3–100 lower-case letters, digits, '.', '_' or '-'")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION.fullmatch(value):
            raise ValueError('version must look like "1.0" or "1.2.3" (optionally "-rc1")')
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        for path, digest in value.items():
            if (
                path.startswith("/")
                or "\\" in path
                or ".." in path.split("/")
                or path == MANIFEST_NAME
            ):
                raise ValueError(
                    f"file path {path!r} must be relative, inside the package, not the manifest"
                )
            if not SHA256.fullmatch(digest):
                raise ValueError(f"file {path!r}: sha256 must be 64 lower-case hex digits")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        runtime = self.runtime
        keys = {f.key for f in self.outputs.findings}
        if isinstance(runtime, OnnxRuntimeSpec):
            if runtime.model not in self.files:
                raise ValueError(f"runtime model {runtime.model!r} is not listed under files")
            unknown = [c for c in runtime.classes if c not in keys]
            if unknown:
                raise ValueError(f"runtime classes {unknown} are not keys of outputs.findings")
            bins = runtime.postprocess.score_bins
            if bins and tuple(self.outputs.score_range) != (1.0, float(len(bins) + 1)):
                raise ValueError(
                    f"with {len(bins)} score_bins the score_range must be [1, {len(bins) + 1}]"
                )
        if isinstance(runtime, PythonRuntimeSpec):
            module = runtime.entry_point.split(":")[0]
            if module not in self.files:
                raise ValueError(f"entry point file {module!r} is not listed under files")
        if (
            isinstance(runtime, DicomNodeRuntimeSpec)
            and self.intended_use.input_kind is not InputKind.DICOM_STUDY
        ):
            raise ValueError("the dicom_node runtime takes dicom-study input only")
        return self

    @property
    def label(self) -> str:
        """'Fracture AI 1.0' — how people name a version."""
        return f"{self.name} {self.version}"


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(p) for p in loc if not (isinstance(p, str) and p in {"onnx", "python", "dicom_node"})
    ]
    return ".".join(parts) or "manifest"


def parse_manifest(text: str | bytes) -> Manifest:
    """Parse and validate manifest YAML; raise `ManifestError` listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError([f"manifest.yaml is not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ManifestError(["manifest.yaml must be a mapping of fields"])
    return manifest_from_dict(data)


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field (check the spelling)"
            elif err["type"] == "missing":
                message = "is required"
            problems.append(f"{_where(err['loc'])}: {message}")
        raise ManifestError(problems) from exc


def dump_manifest(manifest: Manifest) -> str:
    """The manifest as YAML (for building packages in tests and tools)."""
    return yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)
