"""Inpatient stays, bed occupancy, vital-sign observations, received HL7 messages, and the
early-warning scores computed from them (always preliminary: a nurse acts on them)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from lods.db import Base, UTCDateTime, utcnow


class EncounterState(StrEnum):
    ACTIVE = "active"
    DISCHARGED = "discharged"


class Encounter(Base):
    """One inpatient stay (ADT A01 admit … A03 discharge); `bed_fk` is where the patient
    lies now. Bed-exit alerts follow the fall risk unless a nurse set them on or off."""

    __tablename__ = "encounters"
    __table_args__ = (UniqueConstraint("site_id", "visit_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    #: PV1-19 visit number; generated ("auto-<n>") when the sender gives none.
    visit_number: Mapped[str] = mapped_column(String(64))
    ward_fk: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=EncounterState.ACTIVE.value, index=True)
    admitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    discharged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: None: bed-exit alerts follow the fall risk; True/False: a nurse turned them on/off.
    bed_exit_alerts: Mapped[bool | None] = mapped_column(Boolean)
    bed_exit_set_by: Mapped[str | None] = mapped_column(String(100))
    bed_exit_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BedStay(Base):
    """A stretch of time an encounter occupied a bed (from ADT); bed-days come from here."""

    __tablename__ = "bed_stays"
    __table_args__ = (Index("ix_bed_stays_ward_time", "ward_fk", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_fk: Mapped[int] = mapped_column(ForeignKey("encounters.id"), index=True)
    ward_fk: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: None while the patient still lies there.
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Hl7Message(Base):
    """Every HL7 v2 message answered with an ACK, kept as received; a repeated
    (sender, MSH-10) is answered with the stored ACK code and changes nothing."""

    __tablename__ = "hl7_messages"
    __table_args__ = (UniqueConstraint("sender", "control_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: MSH-3^MSH-4 (sending application ^ facility).
    sender: Mapped[str] = mapped_column(String(200))
    #: MSH-10 message control id.
    control_id: Mapped[str] = mapped_column(String(64))
    #: e.g. "ORU^R01", "ADT^A01".
    message_type: Mapped[str] = mapped_column(String(20))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: AA, AE or AR: what the sender was told.
    ack_code: Mapped[str] = mapped_column(String(2))
    ack_text: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[str] = mapped_column(Text)


class ScoreRequest(Base):
    """Patients whose new readings are stored but not yet scored: written in the intake
    transaction when scoring runs in the scorer process (`lods.vitals.scorer`), deleted in
    the transaction that stores their scores. What is left after a crash is scored when
    the scorer starts again."""

    __tablename__ = "vitals_score_requests"
    # Ids only grow (SQLite would otherwise reuse a deleted one): the listener matches the
    # scorer's answers to its batches by id.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fks: Mapped[list[int]] = mapped_column(JSON)
    #: The intake time: scores are computed as of it.
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VitalObservation(Base):
    """One vital-sign value. Invalid readings (OBX-11 X, device sentinels) are kept with
    their reason and never scored."""

    __tablename__ = "vital_observations"
    __table_args__ = (Index("ix_vital_observations_patient_time", "patient_fk", "observed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_fk: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), index=True)
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"))
    #: The parameter key the scores use: resp_rate, spo2, heart_rate, pulse_rate, bp_sys,
    #: bp_dia, bp_mean, temperature, consciousness, oxygen.
    parameter: Mapped[str] = mapped_column(String(32))
    #: LOINC code (FHIR Observation.code), and the MDC code it came as, if any.
    loinc: Mapped[str] = mapped_column(String(16))
    mdc_code: Mapped[str | None] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float)
    #: Coded values: ACVPU letter for consciousness, "air"/"oxygen" for oxygen.
    value_text: Mapped[str | None] = mapped_column(String(32))
    #: UCUM unit, e.g. "/min", "%", "mm[Hg]", "Cel".
    unit: Mapped[str] = mapped_column(String(16), default="")
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    invalid_reason: Mapped[str | None] = mapped_column(String(200))
    #: hl7 / fhir / manual
    source: Mapped[str] = mapped_column(String(16))
    message_fk: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id"), index=True)
    #: Who entered it (manual and FHIR entries), or the device id (HL7).
    entered_by: Mapped[str | None] = mapped_column(String(100))


class EarlyWarningScore(Base):
    """One evaluation of an early-warning table for a patient. A total and band are
    claimed only when the set is complete (`complete`); otherwise `missing` lists what is
    absent or stale. Provenance: the solution version that scored it."""

    __tablename__ = "ews_scores"
    __table_args__ = (Index("ix_ews_scores_patient_time", "patient_fk", "computed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_fk: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), index=True)
    bed_fk: Mapped[int | None] = mapped_column(ForeignKey("beds.id"))
    version_fk: Mapped[int] = mapped_column(ForeignKey("solution_versions.id"), index=True)
    deployment_fk: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    #: The score's own name from its table, e.g. "NEWS2".
    score_name: Mapped[str] = mapped_column(String(40))
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Time of the newest observation in the set.
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    complete: Mapped[bool] = mapped_column(Boolean)
    total: Mapped[int | None] = mapped_column(Integer)
    #: Band key from the table (e.g. "high", "medium", "low_medium", "low"); None if incomplete.
    band: Mapped[str | None] = mapped_column(String(32))
    #: Parameters missing or older than their freshness window.
    missing: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: {parameter: {"value": ..., "points": n, "observation": id}}
    parts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The patient options in force (e.g. {"spo2_scale": 2}).
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Minutes until the next set is due, by the band's monitoring frequency.
    next_due_minutes: Mapped[int | None] = mapped_column(Integer)


class PatientOption(Base):
    """A clinician's setting for one patient's scoring, with author and reason
    (e.g. SpO2 scale 2, an adjusted threshold, pregnancy). Revoked rows stay."""

    __tablename__ = "patient_options"
    __table_args__ = (Index("ix_patient_options_patient_key", "patient_fk", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    #: "spo2_scale", "pregnant", or "threshold:<parameter>".
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[Any] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(100))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(100))


class LatestVital(Base):
    """The newest valid reading of each parameter of a patient (kept in the transaction
    that stores the reading; see `lods.vitals.latest`), so scoring a patient reads a
    handful of rows instead of searching the observations."""

    __tablename__ = "latest_vitals"

    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    parameter: Mapped[str] = mapped_column(String(32), primary_key=True)
    observation_fk: Mapped[int] = mapped_column(ForeignKey("vital_observations.id"))
    value: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(String(32))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
