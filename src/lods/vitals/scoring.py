"""Early-warning scores after vital-sign intake, overdue reminders, and reading them back.

`score_after_intake` is called by every intake path (HL7 batch, FHIR, manual entry) in the
transaction that stored the observations. For each patient with an active encounter it
runs every active deployment at the encounter's site whose solution takes `vitals` input
(a `python`-runtime score package such as NEWS2) on the newest valid readings, stores an
`EarlyWarningScore` per deployment, and:

- skips (stores a "not scored" row, no total) a patient outside the intended use: younger
  than the manifest's minimum age, age unknown, or with an excluded flag (e.g. pregnant);
- raises `ews.band` (notified to the ward) when a complete score's band rose above the
  encounter's previous complete score into a band the table has a trigger for;
- resolves an open `ews.overdue` reminder once a complete set arrives;
- tells the ward board (`{"type": "score", ...}`) once committed.

Shadow deployments are scored and stored like the others, but never alert, never reach
the board and are left out of `latest_scores` / `score_trend`.

Packages are verified (every file against its SHA-256) when first loaded into the
process, whenever the version or its manifest changes, and again every
`VERIFY_EVERY`; a mismatch takes the platform's integrity-failure path (every deployment
of the version is suspended, admins are alerted) and the version scores nothing more.

Speed: one query for the batch's encounters with their deployments, one for options, one
for the newest readings (the rows `lods.vitals.latest` keeps per patient and parameter),
one for the previous bands (an index seek per patient), one call of each package for the
whole batch
(`{"batch": [...]}`), one multi-row INSERT for the scores; statements are built once.

The package protocol (`python` runtime, see reference_solutions/news2/package/score.py):
`{"describe": true}` → `details["needs"]` (parameters, their sources and freshness);
`{"batch": [{"readings", "options"}], "now"}` → `details["batch"]` (an evaluation per
patient) with the table's `band_order`, `band_labels` and `triggers`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, Table, bindparam, func, insert, select, union_all, update
from sqlalchemy.orm import Session

from lods.alerts.live import publish_after_commit
from lods.alerts.models import Alert, AlertState
from lods.alerts.service import raise_alert, resolve_by_system
from lods.config import Settings
from lods.db import bulk_insert
from lods.imaging.models import Patient
from lods.solutions.manifest import InputKind, Manifest, parse_manifest
from lods.solutions.models import (
    Deployment,
    DeploymentMode,
    DeploymentState,
    SolutionVersion,
    VersionState,
)
from lods.solutions.runtimes.base import RunContext, RunResult, RuntimeErrorBase
from lods.solutions.runtimes.python import PythonRuntime
from lods.solutions.service import record_integrity_failure, verify_files
from lods.vitals import latest
from lods.vitals.latest import FUTURE_TOLERANCE
from lods.vitals.models import EarlyWarningScore, Encounter, EncounterState, VitalObservation
from lods.vitals.options import options_in_force_many

log = logging.getLogger(__name__)

#: Installed packages are hashed again after this long in one process.
VERIFY_EVERY = timedelta(minutes=5)
#: A previous complete score older than this does not count for a band rise.
PRIOR_HORIZON = timedelta(hours=24)
#: Patients per UNION ALL statement (SQLite allows 500 compound terms).
CHUNK = 100
#: Used when a package cannot say which readings it needs.
FALLBACK_LOOKBACK_MINUTES = 24 * 60
OVERDUE_KIND = "ews.overdue"
BAND_KIND = "ews.band"
NOT_SCORED = "not_scored"
WARD_AUDIENCE = ("nurse", "physician")

_RUNTIME = PythonRuntime()


# --- loaded packages ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    key: str
    sources: tuple[str, ...]
    freshness_minutes: int


@dataclass
class _Package:
    folder: Path
    manifest: Manifest
    verified_at: datetime
    needs: list[_Need] = field(default_factory=list)

    @property
    def lookback(self) -> timedelta:
        return timedelta(
            minutes=max(
                (n.freshness_minutes for n in self.needs), default=FALLBACK_LOOKBACK_MINUTES
            )
        )


_packages: dict[tuple[str, int, str], _Package] = {}
_packages_lock = threading.Lock()


def forget_packages() -> None:
    """Drop every loaded package: the next score loads and verifies afresh."""
    with _packages_lock:
        _packages.clear()


@dataclass(frozen=True)
class _Deployment:
    id: int
    mode: str
    site_id: int
    version_id: int
    manifest_sha256: str
    package_path: str

    @property
    def shadow(self) -> bool:
        return self.mode == DeploymentMode.SHADOW.value


def _describe(package: _Package) -> list[_Need]:
    """What the package reads (`{"describe": true}`); [] when it cannot say."""
    try:
        result = _run(package, {"describe": True})
    except RuntimeErrorBase as exc:
        log.warning("scoring: %s cannot describe its needs: %s", package.manifest.label, exc)
        return []
    needs = result.details.get("needs") or []
    return [
        _Need(str(n["key"]), tuple(n["sources"]), int(n["freshness_minutes"]))
        for n in needs
        if isinstance(n, dict)
    ]


def _load_package(
    db: Session, settings: Settings, deployment: _Deployment, now: datetime
) -> _Package | None:
    """The verified package of the deployment's version, from the process cache when it
    was verified less than `VERIFY_EVERY` ago; None after an integrity failure."""
    folder = settings.solutions_dir / deployment.package_path
    key = (str(folder), deployment.version_id, deployment.manifest_sha256)
    with _packages_lock:
        cached = _packages.get(key)
    if cached is not None and timedelta(0) <= now - cached.verified_at <= VERIFY_EVERY:
        return cached
    version = db.get(SolutionVersion, deployment.version_id)
    if version is None:
        return None
    problems = verify_files(
        settings,
        package_path=version.package_path,
        manifest_text=version.manifest_text,
        files=version.files,
    )
    if problems:
        with _packages_lock:
            _packages.pop(key, None)
        log.error("scoring: %s failed its integrity check: %s", version.label, problems)
        record_integrity_failure(db, version_id=version.id, problems=problems, now=now)
        return None
    db.execute(
        update(SolutionVersion)
        .where(SolutionVersion.id == version.id)
        .values(last_verified_at=now)
        .execution_options(synchronize_session=False)
    )
    if cached is not None:
        cached.verified_at = now
        return cached
    package = _Package(
        folder=folder, manifest=parse_manifest(version.manifest_text), verified_at=now
    )
    package.needs = _describe(package)
    with _packages_lock:
        _packages[key] = package
    return package


def _run(package: _Package, payload: dict[str, Any]) -> RunResult:
    ctx = RunContext(
        job_id=0,
        package_dir=package.folder,
        manifest=package.manifest,
        study_uid="",
        images=(),
        deadline=time.monotonic() + package.manifest.limits.timeout_seconds,
        payload=payload,
    )
    return _RUNTIME.run(ctx)


# --- batch queries -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encounter:
    id: int
    patient_fk: int
    site_id: int
    ward_fk: int | None
    bed_fk: int | None
    birth_date: date | None


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _padded(count: int) -> int:
    """`count` rounded up to a power of two: the UNION statements are built (and compiled
    by SQLAlchemy) once per size, so a handful of sizes serve every batch."""
    return 1 << max(0, count - 1).bit_length()


@functools.cache
def _work_statement() -> Any:
    """Active encounters of the patients (`patients`, expanding) joined to the early-warning
    deployments at their sites; built once."""
    return (
        select(
            Encounter.id,
            Encounter.patient_fk,
            Encounter.site_id,
            Encounter.ward_fk,
            Encounter.bed_fk,
            Encounter.admitted_at,
            Patient.birth_date,
            Deployment.id.label("deployment_id"),
            Deployment.mode,
            SolutionVersion.id.label("version_id"),
            SolutionVersion.manifest_sha256,
            SolutionVersion.package_path,
        )
        .join(Patient, Patient.id == Encounter.patient_fk)
        # `site_id + 0` and `state || ''` keep SQLite from reaching the encounters through
        # the site or state index (every encounter the hospital ever had, or every patient
        # in a bed) instead of through the patients'.
        .join(Deployment, Deployment.site_fk == Encounter.site_id + 0)
        .join(SolutionVersion, SolutionVersion.id == Deployment.version_fk)
        .where(
            Encounter.patient_fk.in_(bindparam("patients", expanding=True)),
            Encounter.state + "" == EncounterState.ACTIVE.value,
            Deployment.state == DeploymentState.ACTIVE.value,
            SolutionVersion.state == VersionState.APPROVED.value,
            SolutionVersion.integrity_failed_at.is_(None),
            SolutionVersion.input_kind == InputKind.VITALS.value,
            SolutionVersion.runtime_kind == "python",
        )
        .order_by(Deployment.id)
    )


def _work(db: Session, patient_fks: Sequence[int]) -> list[tuple[_Encounter, _Deployment]]:
    """(active encounter, early-warning deployment at its site) pairs of the patients, in
    one query: deployments that are active, of an approved, intact `python` version
    taking `vitals` input. A patient with two active encounters counts the newest."""
    found: dict[int, tuple[datetime, _Encounter, list[_Deployment]]] = {}
    for chunk in _chunks(patient_fks, 500):
        for row in db.execute(_work_statement(), {"patients": list(chunk)}):
            held = found.get(row.patient_fk)
            if held is None or (row.admitted_at, row.id) > (held[0], held[1].id):
                encounter = _Encounter(
                    row.id, row.patient_fk, row.site_id, row.ward_fk, row.bed_fk, row.birth_date
                )
                held = found[row.patient_fk] = (row.admitted_at, encounter, [])
            if held[1].id == row.id:
                held[2].append(
                    _Deployment(
                        row.deployment_id,
                        row.mode,
                        row.site_id,
                        row.version_id,
                        row.manifest_sha256,
                        row.package_path,
                    )
                )
    return [(e, d) for _, e, ds in found.values() for d in ds]


_READING_COLUMNS = (
    VitalObservation.id,
    VitalObservation.patient_fk,
    VitalObservation.parameter,
    VitalObservation.value,
    VitalObservation.value_text,
    VitalObservation.observed_at,
)


def _union(selects: Sequence[Any]) -> Any:
    wrapped = [select(s.subquery()) for s in selects]
    return wrapped[0] if len(wrapped) == 1 else union_all(*wrapped)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _newest_readings(
    db: Session,
    patient_fks: Sequence[int],
    needs: Sequence[_Need],
    *,
    since: datetime,
    now: datetime,
) -> dict[int, dict[str, Any]]:
    """{patient: {source parameter: newest valid reading since `since`}}, from the newest
    readings held per patient (`lods.vitals.latest`). One held later than `now` allows
    (scoring as of an earlier time) is looked up among the observations instead."""
    sources = sorted({s for n in needs for s in n.sources})
    until = now + FUTURE_TOLERANCE
    newest: dict[int, dict[str, Any]] = {p: {} for p in patient_fks}
    later: dict[int, set[str]] = {}
    for row in latest.newest(db, patient_fks, sources, since=since):
        if _utc(row.observed_at) <= until:
            newest[row.patient_fk][row.parameter] = row
        else:
            later.setdefault(row.patient_fk, set()).add(row.parameter)
    for chunk in _chunks(sorted(later), 500):
        query = select(*_READING_COLUMNS).where(
            VitalObservation.patient_fk.in_(chunk),
            VitalObservation.valid.is_(True),
            VitalObservation.observed_at >= since,
            VitalObservation.observed_at <= until,
            VitalObservation.parameter.in_(sorted(set().union(*later.values()))),
        )
        for older in db.execute(query):
            if older.parameter not in later[older.patient_fk]:
                continue
            found = newest[older.patient_fk]
            held = found.get(older.parameter)
            if held is None or (older.observed_at, older.id) > (held.observed_at, held.id):
                found[older.parameter] = older
    return newest


@functools.lru_cache(maxsize=16)
def _previous_statement(count: int) -> Any:
    """The newest complete score of each of `count` (patient p_i, encounter e_i,
    deployment d_i) since `since` (one index seek each)."""
    selects = [
        select(
            EarlyWarningScore.id,
            EarlyWarningScore.encounter_fk,
            EarlyWarningScore.deployment_fk,
            EarlyWarningScore.band,
        )
        .where(
            EarlyWarningScore.patient_fk == bindparam(f"p{i}"),
            EarlyWarningScore.encounter_fk == bindparam(f"e{i}"),
            EarlyWarningScore.deployment_fk == bindparam(f"d{i}"),
            EarlyWarningScore.complete.is_(True),
            EarlyWarningScore.computed_at >= bindparam("since"),
        )
        .order_by(EarlyWarningScore.computed_at.desc(), EarlyWarningScore.id.desc())
        .limit(1)
        for i in range(count)
    ]
    return _union(selects)


def _previous_complete(
    db: Session, keys: Sequence[tuple[int, int, int]], *, since: datetime
) -> dict[tuple[int, int], str | None]:
    """{(encounter, deployment): band} of the newest complete score of each
    (patient, encounter, deployment) since `since`."""
    out: dict[tuple[int, int], str | None] = {}
    for chunk in _chunks(list(keys)):
        size = _padded(len(chunk))
        params: dict[str, Any] = {"since": since}
        for i, (patient, encounter, deployment) in enumerate(
            [*chunk, *[(-1, -1, -1)] * (size - len(chunk))]
        ):
            params.update({f"p{i}": patient, f"e{i}": encounter, f"d{i}": deployment})
        for row in db.execute(_previous_statement(size), params):
            out[(row.encounter_fk, row.deployment_fk)] = row.band
    return out


# --- intended use -----------------------------------------------------------------------------


def _age_years(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _not_in_use(
    manifest: Manifest, encounter: _Encounter, options: dict[str, Any], now: datetime
) -> str | None:
    """Why the patient is outside the solution's intended use, or None."""
    use = manifest.intended_use
    for flag in use.excluded_patient_flags:
        if options.get(flag) is True:
            return flag.replace("_", " ")
    if use.age is not None and (use.age.min_years is not None or use.age.max_years is not None):
        if encounter.birth_date is None:
            return "age unknown"
        age = _age_years(encounter.birth_date, now.astimezone(UTC).date())
        if use.age.min_years is not None and age < use.age.min_years:
            return f"under {use.age.min_years:g}"
        if use.age.max_years is not None and age > use.age.max_years:
            return f"over {use.age.max_years:g}"
    return None


def not_scored_reason(score: EarlyWarningScore) -> str | None:
    """'not scored: under 16' when the score row records an intended-use skip, else None."""
    reason = (score.options or {}).get(NOT_SCORED)
    return f"not scored: {reason}" if reason else None


# --- scoring ----------------------------------------------------------------------------------


@dataclass
class _ScoreRow:
    """A score about to be stored: the `ews_scores` columns, without ORM bookkeeping
    (thousands are written a second); `id` is set once inserted."""

    patient_fk: int
    encounter_fk: int
    bed_fk: int | None
    version_fk: int
    deployment_fk: int
    score_name: str
    computed_at: datetime
    observed_at: datetime
    complete: bool
    total: int | None
    band: str | None
    missing: list[str]
    parts: dict[str, Any]
    options: dict[str, Any]
    next_due_minutes: int | None
    id: int | None = None


_SCORE_COLUMNS = tuple(f for f in _ScoreRow.__dataclass_fields__ if f != "id")


@dataclass
class _Scored:
    score: _ScoreRow
    encounter: _Encounter
    deployment: _Deployment
    #: The package's evaluation of this patient (`lods.vitals.ews.Evaluation.as_dict`).
    evaluation: dict[str, Any]
    #: The table's facts the package returned once per call: band_order, band_labels,
    #: triggers.
    table: dict[str, Any]


def _payload(
    readings: dict[str, Row[Any]], options: dict[str, Any], now: datetime
) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for row in readings.values():
        # By key through the row's mapping: several times cheaper than Row attributes.
        r = row._mapping
        out.append(
            {
                "parameter": r["parameter"],
                "value": r["value"],
                "value_text": r["value_text"],
                "observed_at": r["observed_at"],
                "id": r["id"],
            }
        )
    return {"readings": out, "options": options}


def _score_row(
    encounter: _Encounter,
    deployment: _Deployment,
    evaluation: dict[str, Any],
    options: dict[str, Any],
    now: datetime,
) -> _ScoreRow:
    observed = evaluation.get("observed_at")
    return _ScoreRow(
        patient_fk=encounter.patient_fk,
        encounter_fk=encounter.id,
        bed_fk=encounter.bed_fk,
        version_fk=deployment.version_id,
        deployment_fk=deployment.id,
        score_name=str(evaluation.get("score_name", ""))[:40],
        computed_at=now,
        observed_at=datetime.fromisoformat(observed) if observed else now,
        complete=bool(evaluation.get("complete")),
        total=evaluation.get("total"),
        band=evaluation.get("band"),
        missing=list(evaluation.get("missing") or []),
        parts=dict(evaluation.get("parts") or {}),
        options=options,
        next_due_minutes=evaluation.get("next_due_minutes"),
    )


def _skip_row(
    encounter: _Encounter,
    deployment: _Deployment,
    package: _Package,
    reason: str,
    options: dict[str, Any],
    now: datetime,
) -> _ScoreRow:
    return _ScoreRow(
        patient_fk=encounter.patient_fk,
        encounter_fk=encounter.id,
        bed_fk=encounter.bed_fk,
        version_fk=deployment.version_id,
        deployment_fk=deployment.id,
        score_name=package.manifest.name[:40],
        computed_at=now,
        observed_at=now,
        complete=False,
        total=None,
        band=None,
        missing=[],
        parts={},
        options={**options, NOT_SCORED: reason},
        next_due_minutes=None,
    )


def _score_batch(
    package: _Package,
    deployment: _Deployment,
    encounters: list[_Encounter],
    readings: dict[int, dict[str, Row[Any]]],
    options: dict[int, dict[str, Any]],
    now: datetime,
) -> list[_Scored]:
    """One call of the package for all `encounters` of a deployment; the rows to store."""
    payload = {
        "batch": [_payload(readings[e.patient_fk], options[e.patient_fk], now) for e in encounters],
        "now": now.isoformat(),
    }
    try:
        result = _run(package, payload)
    except RuntimeErrorBase as exc:
        log.warning("scoring: %s failed: %s", package.manifest.label, exc)
        return []
    answers = result.details.get("batch")
    if not isinstance(answers, list) or len(answers) != len(encounters):
        log.warning("scoring: %s answered no batch of the right size", package.manifest.label)
        return []
    table = {k: v for k, v in result.details.items() if k != "batch"}
    out: list[_Scored] = []
    for encounter, answer in zip(encounters, answers, strict=True):
        evaluation = answer.get("evaluation") if isinstance(answer, dict) else None
        if not isinstance(evaluation, dict):
            log.warning(
                "scoring: %s could not score encounter %s: %s",
                package.manifest.label,
                encounter.id,
                answer.get("error") if isinstance(answer, dict) else answer,
            )
            continue
        row = _score_row(encounter, deployment, evaluation, options[encounter.patient_fk], now)
        out.append(_Scored(row, encounter, deployment, evaluation, table))
    return out


def score_after_intake(
    db: Session,
    *,
    patient_fks: Collection[int],
    now: datetime,
    settings: Settings,
    returning: bool = True,
) -> list[EarlyWarningScore]:
    """Score each patient's newest valid readings with the early-warning solutions
    deployed at the patient's site; return the scores stored (none without a deployment),
    read back as rows — unless `returning` is False (the intake paths: they need none)."""
    plan = plan_scores(db, patient_fks=patient_fks, now=now, settings=settings)
    return store_scores(db, plan, settings=settings, returning=returning)


@dataclass
class ScorePlan:
    """Scores worked out from what the database held (`plan_scores`), not yet stored."""

    now: datetime
    stored: list[_Scored] = field(default_factory=list)
    #: Complete scores of live deployments: they may raise a band alert.
    alerting: list[_Scored] = field(default_factory=list)
    #: {(encounter, deployment): band of the previous complete score}.
    previous: dict[tuple[int, int], str | None] = field(default_factory=dict)


def plan_scores(
    db: Session, *, patient_fks: Collection[int], now: datetime, settings: Settings
) -> ScorePlan:
    """Read what scoring needs and run the packages; writes nothing unless a package is
    due for its integrity check (`_load_package`). The scorer process runs this in a read
    transaction, so the database's write lock is held only by `store_scores`."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    plan = ScorePlan(now)
    candidates = _work(db, sorted(set(patient_fks)))
    if not candidates:
        return plan
    packages: dict[int, _Package] = {}
    for deployment in {d.version_id: d for _, d in candidates}.values():
        package = _load_package(db, settings, deployment, now)
        if package is not None:
            packages[deployment.version_id] = package
    work = [(e, d) for e, d in candidates if d.version_id in packages]
    if not work:
        return plan
    patients = sorted({e.patient_fk for e, _ in work})
    options = options_in_force_many(db, patient_fks=patients)
    needs = {n for p in packages.values() for n in p.needs}
    lookback = max((p.lookback for p in packages.values()), default=timedelta(days=1))
    readings = _newest_readings(
        db, patients, sorted(needs, key=lambda n: n.key), since=now - lookback, now=now
    )
    batches: dict[int, list[_Encounter]] = defaultdict(list)
    for encounter, deployment in work:
        package = packages[deployment.version_id]
        patient_options = options[encounter.patient_fk]
        reason = _not_in_use(package.manifest, encounter, patient_options, now)
        if reason is None:
            batches[deployment.id].append(encounter)
            continue
        row = _skip_row(encounter, deployment, package, reason, patient_options, now)
        plan.stored.append(_Scored(row, encounter, deployment, {}, {}))
    deployments = {d.id: d for _, d in work}
    for deployment_id, batch in batches.items():
        deployment = deployments[deployment_id]
        plan.stored += _score_batch(
            packages[deployment.version_id], deployment, batch, readings, options, now
        )
    plan.alerting = [s for s in plan.stored if s.score.complete and not s.deployment.shadow]
    plan.previous = _previous_complete(
        db,
        [(s.encounter.patient_fk, s.encounter.id, s.deployment.id) for s in plan.alerting],
        since=now - PRIOR_HORIZON,
    )
    return plan


def store_scores(
    db: Session, plan: ScorePlan, *, settings: Settings, returning: bool = False
) -> list[EarlyWarningScore]:
    """Store a plan's scores, raise band alerts, close overdue reminders, and tell the
    board once committed; the stored rows when `returning`."""
    now = plan.now
    _insert(db, [s.score for s in plan.stored])
    for item in plan.stored:
        if not item.deployment.shadow and item.encounter.ward_fk is not None:
            publish_after_commit(
                db,
                item.encounter.ward_fk,
                {
                    "type": "score",
                    "bed_id": item.encounter.bed_fk,
                    "score_id": item.score.id,
                    "band": item.score.band,
                },
            )
    for item in plan.alerting:
        prior = plan.previous.get((item.encounter.id, item.deployment.id))
        _alert_on_rise(db, item, prior, now=now, settings=settings)
    _resolve_overdue(
        db, {s.encounter.id for s in plan.alerting}, now=now, resolution="a complete set arrived"
    )
    if not returning or not plan.stored:
        return []
    ids = [s.score.id for s in plan.stored]
    found = {
        row.id: row
        for row in db.scalars(select(EarlyWarningScore).where(EarlyWarningScore.id.in_(ids)))
    }
    return [found[i] for i in ids if i in found]


def _insert(db: Session, scores: list[_ScoreRow]) -> None:
    """Store the new scores with one statement (not the ORM unit of work) and set their
    ids: on SQLite one executemany with ids after the largest (the transaction holds the
    database's only write lock, so they are ours), elsewhere a multi-row INSERT
    RETURNING."""
    if not scores:
        return
    table: Table = EarlyWarningScore.__table__  # type: ignore[assignment]
    conn = db.connection()
    rows = [{c: getattr(score, c) for c in _SCORE_COLUMNS} for score in scores]
    if conn.dialect.name == "sqlite":
        first = int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1
        for n, (score, row) in enumerate(zip(scores, rows, strict=True)):
            row["id"] = score.id = first + n
        bulk_insert(conn, table, rows)
        return
    ids = conn.execute(
        insert(table).returning(table.c.id, sort_by_parameter_order=True), rows
    ).scalars()
    for score, key in zip(scores, ids, strict=True):
        score.id = key


# --- alerts ---------------------------------------------------------------------------------


def _open_alert(db: Session, kind: str, subject: str) -> Alert | None:
    return db.scalars(
        select(Alert).where(
            Alert.kind == kind,
            Alert.subject == subject,
            Alert.state != AlertState.RESOLVED.value,
        )
    ).first()


def _rise_trigger(
    table: dict[str, Any], previous: str | None, current: str | None
) -> dict[str, Any] | None:
    """The package's trigger rule for a rise from `previous` to `current`, if any."""
    order: list[str] = list(table.get("band_order") or [])
    if current is None or current not in order:
        return None
    before = order.index(previous) if previous in order else -1
    if order.index(current) <= before:
        return None
    return next((t for t in table.get("triggers") or [] if t.get("to") == current), None)


def _alert_on_rise(
    db: Session, item: _Scored, previous: str | None, *, now: datetime, settings: Settings
) -> None:
    """Raise `ews.band` when the band rose into one with a trigger; an open one for the
    encounter (a lower band) is closed by the system and replaced, so the ward is told
    again and the newest band is what shows."""
    score = item.score
    trigger = _rise_trigger(item.table, previous, score.band)
    if trigger is None:
        return
    evaluation = item.evaluation
    labels = item.table.get("band_labels") or {}
    band_label = labels.get(score.band, score.band)
    subject = f"ews:{item.encounter.id}"
    existing = _open_alert(db, BAND_KIND, subject)
    if existing is not None:
        resolve_by_system(
            db, alert=existing, resolution=f"{score.score_name} rose to {band_label}", now=now
        )
    raise_alert(
        db,
        kind=BAND_KIND,
        subject=subject,
        title=trigger.get("title") or f"{score.score_name} {band_label} ({score.total})",
        detail=" ".join(x for x in (evaluation.get("monitoring"), evaluation.get("response")) if x),
        severity=str(trigger.get("severity", "warning")),
        audience=tuple(trigger.get("audience") or WARD_AUDIENCE),
        site_id=item.encounter.site_id,
        ward_id=item.encounter.ward_fk,
        bed_id=item.encounter.bed_fk,
        patient_id=item.encounter.patient_fk,
        facts={
            "score": score.total,
            "band": score.band,
            "band_label": band_label,
            "previous_band": previous,
            "score_id": score.id,
            "score_name": score.score_name,
            "encounter_id": item.encounter.id,
            "parts": {k: v.get("points") for k, v in score.parts.items()},
        },
        notify=True,
        webhook=settings.notify_webhook_url,
        now=now,
    )


@functools.cache
def _open_overdue_statement() -> Any:
    # Subjects "ews-overdue:<encounter>" belong to overdue reminders only; with a filter on
    # the kind as well, SQLite reads every reminder ever raised through the kind's index.
    return select(Alert.id).where(
        Alert.subject.in_(bindparam("subjects", expanding=True)),
        Alert.state != AlertState.RESOLVED.value,
    )


def _resolve_overdue(
    db: Session, encounter_ids: Collection[int], *, now: datetime, resolution: str
) -> None:
    """Close the encounters' open overdue reminders: their set has arrived."""
    subjects = [f"ews-overdue:{e}" for e in sorted(encounter_ids)]
    for chunk in _chunks(subjects, 500):
        for alert_id in db.scalars(_open_overdue_statement(), {"subjects": list(chunk)}).all():
            alert = db.get(Alert, alert_id)
            if alert is not None:
                resolve_by_system(db, alert=alert, resolution=resolution, now=now)


# --- reading scores back ---------------------------------------------------------------------


def _visible() -> Any:
    """Scores of deployments that show results (not shadow)."""
    return EarlyWarningScore.deployment_fk.in_(
        select(Deployment.id).where(Deployment.mode != DeploymentMode.SHADOW.value)
    )


def _latest_ids(
    db: Session, encounters: Sequence[tuple[int, int]], *, complete_only: bool
) -> list[int]:
    """Id of the newest visible score of each (patient, encounter) (one seek each)."""
    ids: list[int] = []
    for chunk in _chunks(list(encounters)):
        selects = []
        for patient, encounter in chunk:
            query = select(EarlyWarningScore.id).where(
                EarlyWarningScore.patient_fk == patient,
                EarlyWarningScore.encounter_fk == encounter,
                _visible(),
            )
            if complete_only:
                query = query.where(EarlyWarningScore.complete.is_(True))
            selects.append(
                query.order_by(
                    EarlyWarningScore.computed_at.desc(), EarlyWarningScore.id.desc()
                ).limit(1)
            )
        ids += [row.id for row in db.execute(_union(selects))]
    return ids


def latest_scores(
    db: Session, *, encounter_fks: Collection[int], complete_only: bool = False
) -> dict[int, EarlyWarningScore]:
    """The newest score of each encounter shown to clinicians (shadow output left out);
    with `complete_only`, the newest one with a total."""
    wanted = sorted(set(encounter_fks))
    if not wanted:
        return {}
    pairs = [
        (row.patient_fk, row.id)
        for row in db.execute(
            select(Encounter.id, Encounter.patient_fk).where(Encounter.id.in_(wanted))
        )
    ]
    ids = _latest_ids(db, pairs, complete_only=complete_only)
    if not ids:
        return {}
    scores = db.scalars(select(EarlyWarningScore).where(EarlyWarningScore.id.in_(ids)))
    return {s.encounter_fk: s for s in scores if s.encounter_fk is not None}


def score_trend(db: Session, *, encounter_fk: int, since: datetime) -> list[tuple[datetime, int]]:
    """(time of the set, total) of the encounter's complete visible scores since `since`,
    oldest first; one point per set (a set scored again by a later batch counts once)."""
    rows = db.execute(
        select(EarlyWarningScore.observed_at, EarlyWarningScore.total)
        .where(
            EarlyWarningScore.encounter_fk == encounter_fk,
            EarlyWarningScore.complete.is_(True),
            EarlyWarningScore.observed_at >= since,
            _visible(),
        )
        .order_by(EarlyWarningScore.observed_at, EarlyWarningScore.id)
    )
    points: dict[datetime, int] = {}
    for observed_at, total in rows:
        if total is not None:
            points[observed_at] = total
    return list(points.items())


# --- overdue reminders ------------------------------------------------------------------------


def check_overdue(db: Session, *, now: datetime, settings: Settings) -> int:
    """Remind the ward (`ews.overdue`) of each active encounter whose last complete set is
    older than its band's monitoring frequency; close reminders whose set has arrived or
    whose patient left. Returns the number of reminders raised."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    encounters = {
        row.id: row
        for row in db.execute(
            select(
                Encounter.id,
                Encounter.patient_fk,
                Encounter.site_id,
                Encounter.ward_fk,
                Encounter.bed_fk,
            ).where(Encounter.state == EncounterState.ACTIVE.value)
        )
    }
    open_alerts = {
        a.subject: a
        for a in db.scalars(
            select(Alert).where(
                Alert.kind == OVERDUE_KIND, Alert.state != AlertState.RESOLVED.value
            )
        )
    }
    latest = latest_scores(db, encounter_fks=list(encounters), complete_only=True)
    raised = 0
    overdue_subjects: set[str] = set()
    for encounter_id, score in latest.items():
        if not score.next_due_minutes:
            continue
        interval = timedelta(minutes=score.next_due_minutes)
        due_at = score.observed_at + interval
        if now <= due_at:
            continue
        subject = f"ews-overdue:{encounter_id}"
        overdue_subjects.add(subject)
        severity = "warning" if now > due_at + interval else "info"
        existing = open_alerts.get(subject)
        if existing is not None:
            if existing.severity == severity or severity == "info":
                continue
            resolve_by_system(
                db, alert=existing, resolution="still overdue: now a warning", now=now
            )
        encounter = encounters[encounter_id]
        minutes = int((now - due_at).total_seconds() // 60)
        raise_alert(
            db,
            kind=OVERDUE_KIND,
            subject=subject,
            title=(
                f"{score.score_name} observations overdue by {minutes} min "
                f"(due every {score.next_due_minutes} min)"
            ),
            detail=f"Last complete set at {score.observed_at.isoformat()}, band {score.band}.",
            severity=severity,
            audience=("nurse",),
            site_id=encounter.site_id,
            ward_id=encounter.ward_fk,
            bed_id=encounter.bed_fk,
            patient_id=encounter.patient_fk,
            facts={
                "score_id": score.id,
                "score": score.total,
                "band": score.band,
                "due_at": due_at.isoformat(),
                "minutes_overdue": minutes,
                "encounter_id": encounter_id,
            },
            notify=True,
            webhook=settings.notify_webhook_url,
            now=now,
        )
        raised += 1
    for subject, alert in open_alerts.items():
        if subject in overdue_subjects:
            continue
        encounter_id = int(subject.rpartition(":")[2])
        reason = "a complete set arrived" if encounter_id in encounters else "the patient left"
        resolve_by_system(db, alert=alert, resolution=reason, now=now)
    return raised
