"""Pydantic shapes of the imaging JSON API: study search in, studies and intake out."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lods.imaging.browse import IntakeStats, StudyDetail
from lods.imaging.models import Instance, IntakeRejection, Patient, Series, Study
from lods.imaging.query import StudyFilter
from lods.sites.models import Site


class StudySearch(BaseModel):
    """Query parameters of the study list; empty fields match everything."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field("", max_length=200, description="Words found in patient name, ID or accession")
    patient_id: str = Field("", max_length=64)
    patient_name: str = Field("", max_length=200, description="Part of the name; * and ? work")
    accession: str = Field("", max_length=64)
    date_from: date | None = None
    date_to: date | None = None
    modality: str = Field("", max_length=64, description="One or more, comma separated")
    site: str = Field("", max_length=32, description="Site code")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _dates_in_order(self) -> StudySearch:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        return self

    def to_filter(self) -> StudyFilter:
        """Return the filter these parameters describe."""
        return StudyFilter(
            text=self.q.strip(),
            patient_id=self.patient_id.strip(),
            patient_name=self.patient_name.strip(),
            accession=self.accession.strip(),
            date_from=self.date_from,
            date_to=self.date_to,
            modality=self.modality.strip(),
            site=self.site.strip(),
        )


class PatientOut(BaseModel):
    patient_id: str
    issuer: str
    name: str
    birth_date: date | None
    sex: str

    @classmethod
    def from_row(cls, patient: Patient) -> PatientOut:
        """Return the API view of a patient row."""
        return cls(
            patient_id=patient.patient_id,
            issuer=patient.issuer,
            name=patient.name,
            birth_date=patient.birth_date,
            sex=patient.sex,
        )


class StudySummary(BaseModel):
    study_uid: str
    accession_number: str
    study_id: str
    study_date: date | None
    study_time: str
    description: str
    referring_physician: str
    modalities: list[str]
    num_series: int
    num_instances: int
    site: str | None
    site_name: str | None
    patient: PatientOut
    first_received_at: datetime
    last_received_at: datetime
    stable: bool = Field(description="No instance has arrived for the stable period")
    stable_at: datetime | None

    @classmethod
    def from_rows(cls, study: Study, patient: Patient, site: Site | None) -> StudySummary:
        """Return the API view of a study with its patient and site."""
        return cls(
            study_uid=study.study_uid,
            accession_number=study.accession_number,
            study_id=study.study_id,
            study_date=study.study_date,
            study_time=study.study_time,
            description=study.description,
            referring_physician=study.referring_physician,
            modalities=[m for m in study.modalities.split("\\") if m],
            num_series=study.num_series,
            num_instances=study.num_instances,
            site=site.code if site else None,
            site_name=site.name if site else None,
            patient=PatientOut.from_row(patient),
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            stable=study.stable_at is not None,
            stable_at=study.stable_at,
        )


class StudyPage(BaseModel):
    items: list[StudySummary]
    total: int
    limit: int
    offset: int


class InstanceOut(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    transfer_syntax_uid: str
    version: int
    size: int
    received_at: datetime
    channel: str
    source: str

    @classmethod
    def from_row(cls, instance: Instance) -> InstanceOut:
        """Return the API view of an instance row."""
        return cls.model_validate(instance, from_attributes=True)


class SeriesOut(BaseModel):
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    body_part: str
    num_instances: int
    instances: list[InstanceOut]

    @classmethod
    def from_rows(cls, series: Series, instances: list[Instance]) -> SeriesOut:
        """Return the API view of a series and its current instances."""
        return cls(
            series_uid=series.series_uid,
            modality=series.modality,
            series_number=series.series_number,
            description=series.description,
            body_part=series.body_part,
            num_instances=series.num_instances,
            instances=[InstanceOut.from_row(i) for i in instances],
        )


class StudyDetailOut(StudySummary):
    series: list[SeriesOut]

    @classmethod
    def from_detail(cls, detail: StudyDetail) -> StudyDetailOut:
        """Return the API view of a study with its series and instances."""
        summary = StudySummary.from_rows(detail.study, detail.patient, detail.site)
        series = [SeriesOut.from_rows(s.series, s.instances) for s in detail.series]
        return cls(**summary.model_dump(), series=series)


class RejectionOut(BaseModel):
    id: int
    received_at: datetime
    channel: str
    source: str
    sop_instance_uid: str | None
    status: int
    status_hex: str = Field(description="The DICOM status as 0xNNNN")
    reason: str

    @classmethod
    def from_row(cls, row: IntakeRejection) -> RejectionOut:
        """Return the API view of a refusal."""
        return cls(
            id=row.id,
            received_at=row.received_at,
            channel=row.channel,
            source=row.source,
            sop_instance_uid=row.sop_instance_uid,
            status=row.status,
            status_hex=f"0x{row.status:04X}",
            reason=row.reason,
        )


class IntakeStatsOut(BaseModel):
    since: datetime | None
    received: dict[str, int] = Field(description="Instance versions stored, by channel")
    rejected: dict[str, int] = Field(description="Refusals, by channel")
    rejected_by_status: dict[str, int] = Field(description="Refusals, by DICOM status 0xNNNN")
    recent_rejections: list[RejectionOut]

    @classmethod
    def from_stats(cls, stats: IntakeStats, recent: list[IntakeRejection]) -> IntakeStatsOut:
        """Return the API view of intake statistics and the latest refusals."""
        return cls(
            since=stats.since,
            received=stats.received,
            rejected=stats.rejected,
            rejected_by_status={f"0x{s:04X}": n for s, n in stats.rejected_by_status.items()},
            recent_rejections=[RejectionOut.from_row(r) for r in recent],
        )
