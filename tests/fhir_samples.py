"""Literal study results shared by the FHIR and HL7 builder tests: a live AI result with
two findings, and the same study signed (or amended) with three clinician decisions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

from lods.fhir.values import (
    AiFinding,
    AiResult,
    Box,
    Code,
    DecisionInfo,
    PatientInfo,
    PersonInfo,
    ReportInfo,
    RevisionInfo,
    SolutionInfo,
    StudyInfo,
    StudyResults,
)

FRACTURE = Code("SCT", "125605004", "Fracture of bone")
MISSED = Code("SCT", "263204007", "Dislocation")
SOLUTION = SolutionInfo(
    key=7,
    solution_id="org.example.fracture",
    version="2.1.0",
    name="Fracture AI",
    vendor="Example Medical",
    manifest_sha256="ab" * 32,
)
RITA = PersonInfo(key=3, username="rita", full_name="Rita Radiolog")
RALF = PersonInfo(key=4, username="ralf", full_name="Ralf Second")
AI_TIME = datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC)
SIGNED = datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
AMENDED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

SURE_FINDING = AiFinding(
    key=11,
    code=FRACTURE,
    label="Fracture",
    score=0.91,
    certainty="sure",
    box=Box("1.2.3.4.5", 10.0, 20.0, 110.5, 220.0),
    body_part="WRIST",
)
DOUBTFUL_FINDING = AiFinding(
    key=12, code=FRACTURE, label="Fracture", score=0.62, certainty="doubtful"
)
AI = AiResult(
    key=5,
    solution=SOLUTION,
    outcome="positive",
    text="Fracture",
    score=0.91,
    certainty="sure",
    created_at=AI_TIME,
    mode="live",
    findings=(SURE_FINDING, DOUBTFUL_FINDING),
)
PATIENT = PatientInfo(
    patient_id="0101501234",
    issuer="1.2.208.176.1.2",
    name="Østergård^Søren",
    birth_date=date(1950, 1, 1),
    sex="M",
)
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.1001",
    accession_number="ACC42",
    study_date=date(2026, 3, 1),
    description="Wrist DX",
    modalities="DX",
    site_code="AUH",
    site_name="Aarhus",
)


def ai_only() -> StudyResults:
    return StudyResults(patient=PATIENT, study=STUDY, ai_results=(AI,))


def signed(*, state: str = "signed") -> StudyResults:
    revisions = [RevisionInfo(version=1, state="signed", signer=RITA, signed_at=SIGNED)]
    if state == "amended":
        revisions.append(
            RevisionInfo(
                version=2, state="amended", signer=RALF, signed_at=AMENDED, reason="Wrong side"
            )
        )
    report = ReportInfo(
        key=9,
        state=state,
        version=len(revisions),
        text="Distal radius fracture.\nNo dislocation.",
        conclusion="positive",
        author=RITA,
        signer=revisions[-1].signer,
        signed_at=revisions[-1].signed_at,
        amendment_reason=revisions[-1].reason,
        revisions=tuple(revisions),
    )
    decisions = (
        DecisionInfo(key=21, decision="agree", by=RITA, decided_at=SIGNED, ai_finding=SURE_FINDING),
        DecisionInfo(
            key=22,
            decision="disagree",
            by=RITA,
            decided_at=SIGNED,
            ai_finding=DOUBTFUL_FINDING,
            comment="Nutrient canal",
        ),
        DecisionInfo(
            key=23,
            decision="added",
            by=RITA,
            decided_at=SIGNED,
            code=MISSED,
            box=Box("1.2.3.4.5", 5.0, 6.0, 50.0, 60.0, frame=1),
            body_part="WRIST",
        ),
    )
    return StudyResults(
        patient=PATIENT, study=STUDY, ai_results=(AI,), report=report, decisions=decisions
    )


def human_only() -> StudyResults:
    full = signed()
    return dataclasses.replace(full, ai_results=(), decisions=(full.decisions[2],))
