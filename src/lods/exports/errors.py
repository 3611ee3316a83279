"""The two ways a send can fail, as every transport (DICOM, FHIR, HL7) reports them.

A transport raises `TransientSendError` when the same send may succeed later without
anyone changing the payload: the peer is down or refuses connections, an association or
request timed out, the peer is out of resources or asks us to come back. The outbox then
counts the attempt and tries again after an exponential back-off.

It raises `PermanentSendError` when sending the same bytes again cannot help: the peer
says the data is bad or of a kind it will never accept, the destination no longer
exists, the payload is missing. The outbox marks the row failed with the reason and shows
it to administrators, who may retry it by hand once the cause is fixed.

Anything else a transport raises is a bug; the outbox treats it as transient (logged
with its traceback), so nothing is dropped because of it.
"""

from __future__ import annotations


class SendError(Exception):
    """A send did not succeed; `permanent` says whether retrying the same payload can help."""

    permanent = False


class TransientSendError(SendError):
    """The send may succeed on a later attempt (peer down, time-out, busy)."""

    permanent = False


class PermanentSendError(SendError):
    """The send will fail again with the same payload (rejected data, unknown destination)."""

    permanent = True
