"""Plain values describing a study's results, as the FHIR and HL7 v2 builders read them.

`store.py` fills these from the database; the builders (`resources.py`, `exports/hl7.py`)
never see an ORM object, so they are pure functions that tests can call with literals.
Only what may leave Lods is here: AI results of pilot and live deployments (shadow output
never), and a report only once a named clinician has signed it (drafts never).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True)
class Code:
    """A coded concept as Lods stores it: DICOM-style scheme designator, value, meaning."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of one stored image (and frame)."""

    sop_instance_uid: str
    x0: float
    y0: float
    x1: float
    y1: float
    frame: int | None = None


@dataclass(frozen=True)
class PatientInfo:
    #: The hospital's patient identifier (DICOM PatientID) and its issuer, if known.
    patient_id: str
    issuer: str = ""
    #: DICOM person name (Family^Given^Middle^Prefix^Suffix).
    name: str = ""
    birth_date: date | None = None
    #: DICOM sex: M / F / O, or "".
    sex: str = ""


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    accession_number: str = ""
    study_date: date | None = None
    description: str = ""
    modalities: str = ""
    #: The Lods site the study belongs to (code and name), for HL7 MSH-4 and displays.
    site_code: str = ""
    site_name: str = ""


@dataclass(frozen=True)
class SolutionInfo:
    """One installed, immutable version of an AI solution: a FHIR Device."""

    #: The database key of the version; the Device's id is `solution-<key>`.
    key: int
    solution_id: str
    version: str
    name: str
    vendor: str
    manifest_sha256: str = ""


@dataclass(frozen=True)
class PersonInfo:
    """A Lods user acting as a clinician: a FHIR Practitioner."""

    #: The database key of the user; the Practitioner's id is `user-<key>`.
    key: int
    username: str
    full_name: str = ""

    @property
    def display(self) -> str:
        return self.full_name or self.username


@dataclass(frozen=True)
class AiFinding:
    key: int
    code: Code
    label: str
    score: float
    #: sure / doubtful / none, from the solution's operating points.
    certainty: str
    box: Box | None = None
    #: Body Part Examined of the image the finding is on, as a DICOM defined term.
    body_part: str = ""


@dataclass(frozen=True)
class AiResult:
    """One AI job's study-level answer and its findings: always preliminary."""

    key: int
    solution: SolutionInfo
    #: positive / uncertain / negative, and the solution's words for it.
    outcome: str
    text: str
    score: float | None
    certainty: str
    created_at: datetime
    #: pilot or live (shadow results never become values).
    mode: str
    findings: tuple[AiFinding, ...] = ()
    #: Whether this is the newest result of its deployment for the study (what clinicians
    #: see and decide on); an older one can still be read by id.
    current: bool = True


@dataclass(frozen=True)
class DecisionInfo:
    """A clinician's decision on one AI finding, or a finding the AI missed ("added")."""

    key: int
    #: agree / disagree / amend / added
    decision: str
    by: PersonInfo
    decided_at: datetime
    #: The AI finding decided on (None for an added finding).
    ai_finding: AiFinding | None = None
    #: The clinician's code and box (amended or added findings).
    code: Code | None = None
    box: Box | None = None
    comment: str = ""
    body_part: str = ""

    @property
    def finding_code(self) -> Code | None:
        """The code the clinician stands behind: their own, else the AI finding's."""
        if self.code is not None:
            return self.code
        return self.ai_finding.code if self.ai_finding is not None else None


@dataclass(frozen=True)
class RevisionInfo:
    """One signed version of a report (1 = signed, 2.. = amendments)."""

    version: int
    #: signed / amended
    state: str
    signer: PersonInfo
    signed_at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class ReportInfo:
    """A clinician's report that has been signed (state signed or amended)."""

    key: int
    #: signed / amended (a draft never becomes a value)
    state: str
    version: int
    text: str
    #: positive / negative / uncertain
    conclusion: str
    author: PersonInfo | None
    signer: PersonInfo | None
    signed_at: datetime | None
    amendment_reason: str | None = None
    revisions: tuple[RevisionInfo, ...] = ()


@dataclass(frozen=True)
class StudyResults:
    """Everything about one study that may leave Lods as a result."""

    patient: PatientInfo
    study: StudyInfo
    ai_results: tuple[AiResult, ...] = ()
    report: ReportInfo | None = None
    decisions: tuple[DecisionInfo, ...] = field(default_factory=tuple)

    @property
    def current_ai_results(self) -> tuple[AiResult, ...]:
        return tuple(r for r in self.ai_results if r.current)

    def solutions(self) -> list[SolutionInfo]:
        """The solutions whose output is in these results (each once, in order)."""
        seen: dict[int, SolutionInfo] = {}
        for result in self.ai_results:
            seen.setdefault(result.solution.key, result.solution)
        return list(seen.values())

    def people(self) -> list[PersonInfo]:
        """The clinicians named in the report (author, signers, deciders), each once."""
        seen: dict[int, PersonInfo] = {}
        report = self.report
        if report is not None:
            for person in (report.author, report.signer):
                if person is not None:
                    seen.setdefault(person.key, person)
            for revision in report.revisions:
                seen.setdefault(revision.signer.key, revision.signer)
        for decision in self.decisions:
            seen.setdefault(decision.by.key, decision.by)
        return list(seen.values())
