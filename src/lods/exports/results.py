"""What an exported result says, as plain values: the algorithm, its findings and study
answer, the clinician's decisions, the signed report, and the identity of the document.

The SR and Secondary Capture builders (`lods.exports.sr`, `lods.exports.sc`) take these and
nothing else, so they never see an ORM object; `lods.exports.service` fills them from the
database. Each value checks itself when constructed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydicom.uid import generate_uid

from lods.solutions.runtimes.base import Box, CodeRef

#: A study outcome, and a report's conclusion, in Lods' words.
OUTCOMES = ("positive", "negative", "uncertain")
#: A clinician's decision on an AI finding, or a finding the clinician added.
DECISIONS = ("agree", "disagree", "amend", "added")


@dataclass(frozen=True)
class Algorithm:
    """An AI solution version, as DICOM identifies it."""

    name: str
    version: str
    manufacturer: str
    #: Unique per version (`algorithm_device_uid`): a new version is a new device.
    device_uid: str
    model_name: str | None = None


@dataclass(frozen=True)
class AiFinding:
    """One AI finding: a code with a score, on a region of an image or for the study."""

    code: CodeRef
    score: float | None
    algorithm: Algorithm
    #: Stable per finding, so the verified document's group can be matched to this one.
    tracking_uid: str
    label: str = ""
    sop_instance_uid: str | None = None
    frame: int | None = None
    box: Box | None = None


@dataclass(frozen=True)
class AiStudyResult:
    """The AI's study-level answer: positive / uncertain / negative, with its words."""

    algorithm: Algorithm
    outcome: str
    text: str
    score: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")


@dataclass(frozen=True)
class HumanDecision:
    """A clinician's decision on one AI finding, or a finding the clinician added."""

    decision: str
    tracking_uid: str
    ai_finding: AiFinding | None = None
    #: The clinician's code and region (amend: what changed; added: the finding).
    code: CodeRef | None = None
    sop_instance_uid: str | None = None
    frame: int | None = None
    box: Box | None = None

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
        if (self.decision == "added") != (self.ai_finding is None):
            raise ValueError("an added finding has no AI finding; every other decision has one")
        if self.decision == "added" and (self.code is None or self.box is None):
            raise ValueError("an added finding needs a code and a box")
        if self.box is not None and not self.image_uid:
            raise ValueError("a decision's box needs the image it is drawn on")

    @property
    def image_uid(self) -> str | None:
        return self.sop_instance_uid or (
            self.ai_finding.sop_instance_uid if self.ai_finding else None
        )

    @property
    def final_code(self) -> CodeRef:
        """The finding as the clinician left it."""
        if self.code is not None:
            return self.code
        assert self.ai_finding is not None
        return self.ai_finding.code

    @property
    def final_region(self) -> tuple[str | None, int | None, Box | None]:
        """(image, frame, box) of the finding as the clinician left it."""
        if self.box is not None:
            return self.image_uid, self.frame, self.box
        ai = self.ai_finding
        return (ai.sop_instance_uid, ai.frame, ai.box) if ai else (None, None, None)

    @property
    def present(self) -> bool:
        """Whether the clinician says the finding is there."""
        return self.decision != "disagree"


@dataclass(frozen=True)
class Signer:
    """Who signed: DICOM person name (Family^Given), organisation, login, when."""

    name: str
    organisation: str
    signed_at: datetime
    login: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.organisation.strip():
            raise ValueError("a signer has a name and an organisation")
        if self.signed_at.tzinfo is None:
            raise ValueError("signed_at must be timezone-aware")


@dataclass(frozen=True)
class SignedReport:
    """The signed report: text, conclusion, version (1 = first signed), signer."""

    text: str
    conclusion: str
    version: int
    signer: Signer
    amendment_reason: str | None = None

    def __post_init__(self) -> None:
        if self.conclusion not in OUTCOMES:
            raise ValueError(f"conclusion must be one of {', '.join(OUTCOMES)}")
        if self.version < 1:
            raise ValueError("a signed report has version 1 or later")


@dataclass(frozen=True)
class DocumentIds:
    """Identity of the document to build (deterministic in the caller, so a rebuild of
    the same thing is the same instance to a PACS)."""

    series_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int
    series_description: str = ""


def person_name(full_name: str) -> str:
    """Return a DICOM person name (Family^Given) from "Given Family" ("Name^" for one word)."""
    text = " ".join(full_name.replace("^", " ").split())
    if not text:
        return "Unknown"
    parts = text.split(" ")
    if len(parts) == 1:
        return f"{parts[0]}^"  # one name: the trailing caret says it is the family name
    return f"{parts[-1]}^{' '.join(parts[:-1])}"


def algorithm_device_uid(solution_id: str, version: str, manifest_sha256: str) -> str:
    """Return the Device UID of one solution version (deterministic; new version, new UID)."""
    return str(generate_uid(entropy_srcs=["lods.algorithm", solution_id, version, manifest_sha256]))
