"""The `webhook` transport: POST a JSON notification to the hospital's nurse-call or phone
system (alert raised, repeated, escalated). Same failure rules as the FHIR push: not
reached, 5xx, 408/425/429 → retried; other answers → failed, shown on /exports."""

from __future__ import annotations

from lods.exports.fhir_push import post


def send(destination: str, payload: str, *, timeout: float) -> None:
    """POST the JSON text `payload` to `destination`; return when it answered 2xx."""
    post(
        destination,
        payload,
        timeout=timeout,
        peer="notification webhook",
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
