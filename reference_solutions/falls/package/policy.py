"""Lods falls policy (reference): what to do with one room-sensor event.

Called by the platform (`lods.falls.service.decide`) through the `python` runtime with
`ctx.payload`:

    {"event": {"kind", "confidence", "time", "device_id", "room"},
     "bed_known": bool,
     "patient": None | {"admitted": True, "morse_total": int | None,
                        "morse_level": str | None, "bed_exit_alerts": bool | None},
     "in_bed": bool | None,
     "open_bed_exit_alert": bool}

and the manifest's `runtime.options` (cut-offs, who is at risk, repeat policy, minimum
confidence per event kind). It answers in `RunResult.details`:
`{"action": "alarm" | "bed_exit_alert" | "clear" | "ignore", "reason": str}` (an alarm
also carries `repeat_seconds` and `escalate_after`).

- fall_detected / person_on_floor: an alarm, whoever is (or is not) in the bed — a
  visitor can fall too — unless the sensor's confidence is below its minimum.
- bed_exit / sitting_on_edge: an alert only for an admitted patient whose nurse turned
  bed-exit alerts on, or — when the nurse left the setting to follow the risk — whose
  Morse total reaches a level in `at_risk_levels`. A nurse's "off" wins over the risk.
- back_in_bed: clear the bed's open bed-exit alert, if there is one.

Pure: no I/O, no clock, no patient identity.
"""

from typing import Any

from lods.solutions.runtimes.base import RunContext, RunResult

FALL_KINDS = ("fall_detected", "person_on_floor")
BED_EXIT_KINDS = ("bed_exit", "sitting_on_edge")
DEFAULTS: dict[str, Any] = {
    "morse_cutoffs": {"moderate": 25, "high": 45},
    "at_risk_levels": ["moderate", "high"],
    "repeat_seconds": 120,
    "escalate_after": 1,
    "min_confidence": {},
}


def _level(total: int, cutoffs: dict[str, int]) -> str:
    if total >= cutoffs["high"]:
        return "high"
    if total >= cutoffs["moderate"]:
        return "moderate"
    return "low"


def decide(payload: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    """The decision: {"action", "reason"} (and the repeat policy of an alarm)."""
    settings: dict[str, Any] = {**DEFAULTS, **(options or {})}
    event = payload["event"]
    kind = event["kind"]
    confidence = event.get("confidence")
    minimum = settings["min_confidence"].get(kind)
    if confidence is not None and minimum is not None and confidence < minimum:
        return {"action": "ignore", "reason": f"confidence {confidence:g} below {minimum:g}"}
    if kind in FALL_KINDS:
        words = "fall detected" if kind == "fall_detected" else "person on the floor"
        return {
            "action": "alarm",
            "reason": words,
            "repeat_seconds": int(settings["repeat_seconds"]),
            "escalate_after": int(settings["escalate_after"]),
        }
    if kind == "back_in_bed":
        if payload.get("open_bed_exit_alert"):
            return {"action": "clear", "reason": "back in bed"}
        return {"action": "ignore", "reason": "no open bed-exit alert"}
    if kind not in BED_EXIT_KINDS:
        return {"action": "ignore", "reason": f"unknown event kind {kind}"}
    if not payload.get("bed_known"):
        return {"action": "ignore", "reason": "unknown bed"}
    patient = payload.get("patient")
    if not patient or not patient.get("admitted"):
        return {"action": "ignore", "reason": "no patient admitted to the bed"}
    setting = patient.get("bed_exit_alerts")
    if setting is False:
        return {"action": "ignore", "reason": "bed-exit alerts turned off by a nurse"}
    if setting is True:
        return {"action": "bed_exit_alert", "reason": "bed-exit alerts turned on by a nurse"}
    total = patient.get("morse_total")
    if total is None:
        return {"action": "ignore", "reason": "no fall-risk assessment"}
    level = _level(total, settings["morse_cutoffs"])
    if level in settings["at_risk_levels"]:
        return {"action": "bed_exit_alert", "reason": f"fall risk {level} (Morse {total})"}
    return {"action": "ignore", "reason": f"fall risk {level} (Morse {total})"}


def run(ctx: RunContext) -> RunResult:
    """Entry point (`policy.py:run`)."""
    return RunResult(details=decide(ctx.payload, ctx.manifest.runtime.options))
