"""Web pages of the ward board: the list of wards, a ward's board (desktop, and a large-
screen layout for the nurses' station), the phone page, one bed's page, the live event
stream, and the actions taken from them as plain forms with the CSRF token.

The board and phone pages carry the board's read model (`lods.monitoring.board`) and are
drawn by `static/ward.js`, which follows `/wards/{id}/events` and re-reads
`/api/wards/{id}/board` on every event. Each page view and each stream opened is one
audit event naming the ward and the patients it showed; changes are audited by the
services they call (alerts, falls, vitals, scoring options).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from lods.alerts import service as alerts
from lods.audit.service import record
from lods.auth.csrf import CsrfProtected
from lods.auth.deps import Principal, SessionDep, get_runtime
from lods.db import utcnow
from lods.falls import service as falls
from lods.falls.models import INJURY_GRADES, OUTCOMES
from lods.imaging.views import person_name
from lods.monitoring import stream
from lods.monitoring.api import (
    BOARD_ROLES,
    MAX_RESOLUTION_CHARS,
    WARD_LIST_ROLES,
    BoardUser,
    WardListUser,
    audit_board,
    occupant,
    resolve_alert,
    ward_alert,
    ward_bed,
    ward_list,
)
from lods.monitoring.board import PARAMETERS, WardNotFound, board_fingerprint, get_ward, ward_board
from lods.monitoring.forms import (
    BED_EXIT_SETTINGS,
    CODED_CHOICES,
    NUMERIC_FIELDS,
    OPTION_KEYS,
    REFUSED,
    back_to,
    entered_values,
    local_time,
    notice_context,
    refused,
)
from lods.vitals import options as scoring_options
from lods.vitals import service as vitals
from lods.web.i18n import catalog, translate
from lods.web.templating import render, request_language

router = APIRouter(include_in_schema=False)

#: Message ids the board's script uses, without this prefix.
JS_PREFIX = "ward.js."
LAYOUTS = ("board", "station")


def _texts(lang: str) -> dict[str, str]:
    return {
        key[len(JS_PREFIX) :]: translate(lang, key)
        for key in catalog("en")
        if key.startswith(JS_PREFIX)
    }


def _page_context(request: Request, board: dict[str, Any], layout: str) -> dict[str, Any]:
    return {
        "board": board,
        "layout": layout,
        "texts": _texts(request_language(request)),
        "pn": person_name,
        "outcomes": OUTCOMES,
        "injury_grades": INJURY_GRADES,
    }


# --- pages -----------------------------------------------------------------------------------


@router.get("/wards", response_class=HTMLResponse)
def wards_page(request: Request, db: SessionDep, user: WardListUser) -> HTMLResponse:
    """Every ward with its beds and open alarms; nurses and physicians open the boards."""
    return render(
        request,
        "wards/list.html",
        {"wards": ward_list(db), "can_open": user.has_any(BOARD_ROLES)},
    )


@router.get("/wards/{ward_id}", response_class=HTMLResponse, response_model=None)
def board_page(
    ward_id: int,
    request: Request,
    db: SessionDep,
    user: BoardUser,
    layout: Annotated[str, Query(max_length=16)] = "board",
    done: str | None = None,
    error: str | None = None,
    reason: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    """The ward board: a tile per bed, live. `?layout=station` is the large-screen mode
    for the nurses' station (big tiles, high contrast, no menus)."""
    layout = layout if layout in LAYOUTS else "board"
    try:
        board = ward_board(db, ward_id=ward_id, now=utcnow())
    except WardNotFound:
        return render(request, "wards/missing.html", status_code=404)
    audit_board(db, user, board, action="ward.board.view", via=layout)
    context = _page_context(request, board, layout) | notice_context(done, error, reason)
    return render(request, "wards/board.html", context)


@router.get("/wards/{ward_id}/phone", response_class=HTMLResponse, response_model=None)
def phone_page(
    ward_id: int,
    request: Request,
    db: SessionDep,
    user: BoardUser,
    done: str | None = None,
    error: str | None = None,
    reason: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    """The phone page: the ward's open alarms first, with big Acknowledge buttons, then
    the beds as a short list."""
    try:
        board = ward_board(db, ward_id=ward_id, now=utcnow())
    except WardNotFound:
        return render(request, "wards/missing.html", status_code=404)
    audit_board(db, user, board, action="ward.phone.view", via="phone")
    context = _page_context(request, board, "phone") | notice_context(done, error, reason)
    return render(request, "wards/phone.html", context)


@router.get("/wards/{ward_id}/beds/{bed_id}", response_class=HTMLResponse, response_model=None)
def bed_page(
    ward_id: int,
    bed_id: int,
    request: Request,
    db: SessionDep,
    user: BoardUser,
    done: str | None = None,
    error: str | None = None,
    reason: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    """One bed: its patient's readings, score, alarms, fall risk and scoring options, and
    the forms to chart observations, enter a Morse assessment and change settings."""
    try:
        ward_bed(db, ward_id, bed_id)
        board = ward_board(db, ward_id=ward_id, now=utcnow())
    except WardNotFound:
        return render(request, "wards/missing.html", status_code=404)
    tile = next(t for t in board["beds"] if t["id"] == bed_id)
    person = tile["occupant"]
    history = scoring_options.list_options(db, patient_fk=person["patient_fk"]) if person else []
    record(
        db,
        actor=user.username,
        action="ward.bed.view",
        object_ref=f"bed:{bed_id}",
        patient_id=person["patient_id"] if person else None,
        source=user.source,
        detail={"ward": board["ward"]["code"], "bed": tile["code"], "via": "web"},
    )
    context = _page_context(request, board, "bed") | notice_context(done, error, reason)
    context |= {
        "tile": tile,
        "option_history": history,
        "morse_items": falls.MORSE_ITEMS,
        "coded_choices": CODED_CHOICES,
        "numeric_fields": NUMERIC_FIELDS,
        "parameters": PARAMETERS,
        "bed_exit_settings": tuple(BED_EXIT_SETTINGS),
        "option_keys": OPTION_KEYS,
    }
    return render(request, "wards/bed.html", context)


@router.get("/wards/{ward_id}/events", response_model=None)
async def ward_events(ward_id: int, request: Request, user: WardListUser) -> StreamingResponse:
    """Server-Sent Events of the ward: `event: <type>` with ids only (alert, vitals, score,
    occupancy, risk, sensor), `event: resync` when the database changed otherwise, and a
    `: ping` comment every 15 s. Opening the stream is audited."""
    fingerprint = await run_in_threadpool(_open_stream, request, user, ward_id)
    return StreamingResponse(
        stream.ward_events(request, ward_id, roles=WARD_LIST_ROLES, fingerprint=fingerprint),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _open_stream(request: Request, user: Principal, ward_id: int) -> str:
    """Check the ward, audit the opening and return its fingerprint (in a worker thread)."""
    with get_runtime(request).sessions() as db, db.begin():
        try:
            ward, site = get_ward(db, ward_id=ward_id)
        except WardNotFound as exc:
            raise HTTPException(404, detail=str(exc)) from None
        record(
            db,
            actor=user.username,
            action="ward.stream.open",
            object_ref=f"ward:{ward.id}",
            source=user.source,
            detail={"ward": ward.code, "site": site.code},
        )
        return board_fingerprint(db, ward_id=ward_id)


# --- actions (forms) ----------------------------------------------------------------------


Back = Annotated[str, Form(max_length=32)]
Answer = Annotated[str, Form(max_length=32)]
Field8 = Annotated[str, Form(max_length=16)]


@router.post("/wards/{ward_id}/alerts/{alert_id}/acknowledge", response_model=None)
def acknowledge_form(
    ward_id: int,
    alert_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    back: Back = "board",
) -> RedirectResponse:
    """Acknowledge an alarm of this ward and go back to the page it was on."""
    try:
        ward_alert(db, ward_id, alert_id)
        alerts.acknowledge(db, alert_id=alert_id, actor=user.username, source=user.source)
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="acknowledged")


@router.post("/wards/{ward_id}/alerts/{alert_id}/resolve", response_model=None)
def resolve_form(
    ward_id: int,
    alert_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    back: Back = "board",
    resolution: Annotated[str, Form(max_length=MAX_RESOLUTION_CHARS)] = "",
    outcome: Annotated[str, Form(max_length=32)] = "",
    injury_grade: Annotated[str, Form(max_length=32)] = "",
) -> RedirectResponse:
    """Close an alarm: a fall alarm with what happened, another alert with what was done."""
    try:
        alert = ward_alert(db, ward_id, alert_id)
        resolve_alert(
            db,
            user,
            alert,
            resolution=resolution,
            outcome=outcome or None,
            injury_grade=injury_grade or None,
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="resolved")


@router.post("/wards/{ward_id}/beds/{bed_id}/morse", response_model=None)
def morse_form(
    ward_id: int,
    bed_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    history_of_falling: Answer = "",
    secondary_diagnosis: Answer = "",
    ambulatory_aid: Answer = "",
    iv_therapy: Answer = "",
    gait: Answer = "",
    mental_status: Answer = "",
) -> RedirectResponse:
    """Enter a Morse Fall Scale assessment for the bed's patient (the six answers)."""
    back = f"bed:{bed_id}"
    items = {
        "history_of_falling": history_of_falling,
        "secondary_diagnosis": secondary_diagnosis,
        "ambulatory_aid": ambulatory_aid,
        "iv_therapy": iv_therapy,
        "gait": gait,
        "mental_status": mental_status,
    }
    try:
        ward_bed(db, ward_id, bed_id)
        enc = occupant(db, bed_id)
        falls.assess_morse(
            db, encounter_id=enc.id, items=items, actor=user.username, source=user.source
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="morse")


@router.post("/wards/{ward_id}/beds/{bed_id}/bed-exit", response_model=None)
def bed_exit_form(
    ward_id: int,
    bed_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    setting: Annotated[str, Form(max_length=8)],
    back: Back = "",
) -> RedirectResponse:
    """Turn bed-exit alerts on or off for the bed's patient, or back to the fall risk."""
    back = back or f"bed:{bed_id}"
    try:
        if setting not in BED_EXIT_SETTINGS:
            raise ValueError("choose auto, on or off")
        ward_bed(db, ward_id, bed_id)
        enc = occupant(db, bed_id)
        falls.set_bed_exit_alerts(
            db,
            encounter_id=enc.id,
            on=BED_EXIT_SETTINGS[setting],
            actor=user.username,
            source=user.source,
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="bed_exit")


@router.post("/wards/{ward_id}/beds/{bed_id}/options", response_model=None)
def option_form(
    ward_id: int,
    bed_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    key: Annotated[str, Form(max_length=32)],
    value: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> RedirectResponse:
    """Put a scoring option in force for the bed's patient (SpO2 scale, pregnancy), with
    the reason; setting a key again replaces the option in force."""
    back = f"bed:{bed_id}"
    try:
        if key not in OPTION_KEYS:
            raise ValueError(f"choose one of {', '.join(OPTION_KEYS)}")
        ward_bed(db, ward_id, bed_id)
        enc = occupant(db, bed_id)
        parsed: Any = value
        if key == "pregnant":
            if value not in ("true", "false"):
                raise ValueError("pregnant is yes or no")
            parsed = value == "true"
        scoring_options.set_option(
            db,
            patient_fk=enc.patient_fk,
            key=key,
            value=parsed,
            reason=reason,
            actor=user.username,
            source=user.source,
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="option_set")


@router.post("/wards/{ward_id}/beds/{bed_id}/options/{option_id}/revoke", response_model=None)
def revoke_option_form(
    ward_id: int,
    bed_id: int,
    option_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
) -> RedirectResponse:
    """Take a scoring option of the bed's patient out of force."""
    back = f"bed:{bed_id}"
    try:
        ward_bed(db, ward_id, bed_id)
        enc = occupant(db, bed_id)
        option = db.get(scoring_options.PatientOption, option_id)
        if option is None or option.patient_fk != enc.patient_fk:
            raise scoring_options.OptionNotFound(f"no scoring option {option_id} for this bed")
        scoring_options.revoke_option(
            db, option_id=option_id, actor=user.username, source=user.source
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="option_revoked")


@router.post("/wards/{ward_id}/beds/{bed_id}/vitals", response_model=None)
def vitals_form(
    ward_id: int,
    bed_id: int,
    request: Request,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    consciousness: Field8 = "",
    oxygen: Field8 = "",
    resp_rate: Field8 = "",
    spo2: Field8 = "",
    bp_sys: Field8 = "",
    bp_dia: Field8 = "",
    pulse_rate: Field8 = "",
    temperature: Field8 = "",
    observed_at: Annotated[str, Form(max_length=40)] = "",
    tz_offset: Annotated[str, Form(max_length=6)] = "",
) -> RedirectResponse:
    """Chart observations for the bed's patient: consciousness (ACVPU) and air or oxygen,
    which monitors do not send, and any other parameter; scored like monitor readings."""
    back = f"bed:{bed_id}"
    entered = {
        "consciousness": consciousness,
        "oxygen": oxygen,
        "resp_rate": resp_rate,
        "spo2": spo2,
        "bp_sys": bp_sys,
        "bp_dia": bp_dia,
        "pulse_rate": pulse_rate,
        "temperature": temperature,
    }
    try:
        values = entered_values(entered)
        now = utcnow()
        ward_bed(db, ward_id, bed_id)
        enc = occupant(db, bed_id)
        vitals.record_manual_vitals(
            db,
            encounter_id=enc.id,
            values=values,
            observed_at=local_time(observed_at, tz_offset, default=now),
            actor=user.username,
            source=user.source,
            now=now,
            settings=get_runtime(request).settings,
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="vitals")


@router.post("/wards/{ward_id}/incidents", response_model=None)
def incident_form(
    ward_id: int,
    db: SessionDep,
    user: BoardUser,
    _csrf: CsrfProtected,
    outcome: Annotated[str, Form(max_length=16)],
    bed_id: Annotated[str, Form(max_length=12)] = "",
    occurred_at: Annotated[str, Form(max_length=40)] = "",
    tz_offset: Annotated[str, Form(max_length=6)] = "",
    injury_grade: Annotated[str, Form(max_length=16)] = "",
    note: Annotated[str, Form(max_length=falls.MAX_NOTE_CHARS)] = "",
    back: Back = "board",
) -> RedirectResponse:
    """Report a fall or near fall that no alarm announced."""
    try:
        now = utcnow()
        falls.record_incident(
            db,
            ward_id=ward_id,
            bed_id=int(bed_id) if bed_id.strip() else None,
            occurred_at=local_time(occurred_at, tz_offset, default=now),
            outcome=outcome,
            injury_grade=injury_grade or None,
            note=note,
            actor=user.username,
            source=user.source,
            now=now,
        )
    except REFUSED as exc:
        return refused(db, ward_id, back, exc)
    return back_to(ward_id, back, done="incident")
