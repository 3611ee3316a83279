"""The transports the outbox sends through, in one explicit registry: name → send function.

The contract, for every transport:

- It is called with a claimed `Message` (the outbox row as plain values) and a
  `SendContext` (settings, blob store, database sessions), outside any database
  transaction, and returns only when the peer has taken the payload.
- It raises `TransientSendError` when a later attempt may succeed (peer down, time-out,
  busy) and `PermanentSendError` when the same payload will never be accepted (the peer
  says the data is bad, the destination does not exist). Anything else it raises is
  treated as transient by the outbox.
- It must be safe to call again for the same message: delivery is at least once.

Registered here:

- ``dicom`` — C-STORE of a Part-10 blob to a `DicomNode` (destination: the node id);
  `lods.exports.dicom`.
- ``fhir`` — slot for `lods.exports.fhir_push.send(destination, payload, *, timeout)`
  (destination: a FHIR base URL; payload: JSON text).
- ``webhook`` — slot for `lods.exports.webhook.send(destination, payload, *, timeout)`
  (destination: the nurse-call / phone system's URL; payload: an alert notification, JSON).
- ``hl7`` — slot for `lods.exports.hl7.send(destination, payload, *, timeout)`
  (destination: host:port of an MLLP listener; payload: an HL7 v2 message).

The FHIR and HL7 senders are imported when first used, so Lods runs without them; a row
for a transport whose module is missing fails permanently with that reason and can be
retried from the admin page once it is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from lods.config import Settings
from lods.exports import dicom
from lods.exports.errors import PermanentSendError
from lods.exports.outbox import Message
from lods.imaging.store import BlobStore


@dataclass(frozen=True)
class SendContext:
    """What a transport may use besides the message."""

    settings: Settings
    store: BlobStore
    sessions: sessionmaker[Session]

    @property
    def timeout(self) -> float:
        """Network time-out of one send, in seconds."""
        return self.settings.export_timeout_seconds


#: A transport: send the message or raise `TransientSendError` / `PermanentSendError`.
Transport = Callable[[Message, SendContext], None]


def _inline_text(message: Message) -> str:
    if message.payload is None:
        raise PermanentSendError(f"outbox row {message.id} has no inline payload to send")
    return message.payload


#: Signature of the text senders that fill the FHIR and HL7 slots.
TextSender = Callable[..., None]


def _text_sender(module: str) -> TextSender:
    """Return `module.send`, imported now; PermanentSendError when it is not installed."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the module exists but one of its own imports is broken: a bug, loud
        raise PermanentSendError(f"the sender {module} is not installed") from exc
    send: TextSender = found.send
    return send


# --- slot: FHIR (filled by lods.exports.fhir_push) ---------------------------------------------


def send_fhir(message: Message, context: SendContext) -> None:
    """Push a FHIR resource or transaction bundle (JSON) to the FHIR base URL."""
    send = _text_sender("lods.exports.fhir_push")
    send(message.destination, _inline_text(message), timeout=context.timeout)


# --- slot: HL7 v2 over MLLP (filled by lods.exports.hl7) ---------------------------------------


def send_hl7(message: Message, context: SendContext) -> None:
    """Send an HL7 v2 message (ORU^R01) to an MLLP listener at host:port."""
    send = _text_sender("lods.exports.hl7")
    send(message.destination, _inline_text(message), timeout=context.timeout)


# --- slot: alert notifications (filled by lods.exports.webhook) ------------------------------


def send_webhook(message: Message, context: SendContext) -> None:
    """POST an alert notification (JSON) to the hospital's nurse-call / phone system."""
    send = _text_sender("lods.exports.webhook")
    send(message.destination, _inline_text(message), timeout=context.timeout)


# --- DICOM --------------------------------------------------------------------------------------


def send_dicom(message: Message, context: SendContext) -> None:
    """C-STORE the message's Part-10 blob to the DICOM node it names."""
    dicom.deliver(
        message,
        store=context.store,
        sessions=context.sessions,
        calling_ae=context.settings.export_calling_ae,
        timeout=context.timeout,
    )


#: The registry. Keys are the `transport` values of outbox rows.
TRANSPORTS: dict[str, Transport] = {
    "dicom": send_dicom,
    "fhir": send_fhir,
    "hl7": send_hl7,
    "webhook": send_webhook,
}


def get_transport(name: str) -> Transport:
    """Return the transport registered as `name`; PermanentSendError when there is none."""
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise PermanentSendError(f"no transport named {name!r}") from None


def dispatch(message: Message, context: SendContext) -> None:
    """Send `message` through the transport its row names."""
    get_transport(message.transport)(message, context)
