"""Read-your-writes across API processes: the client carries its last write's position.

After a write the API answers with a *read mark*, in the ``X-StudyHub-Read-After`` response
header and the ``studyhub_read_after`` cookie: the primary's WAL position after that commit, or,
when it could not be read, "the primary until <time>". Clients echo it (browsers send the
cookie by themselves; other clients copy the header into their next requests), and whichever
worker, process or machine serves the next read routes it to the replica only once the replica
has replayed that position (:meth:`ReadRouter.choose`). The in-process map of
:class:`~studyhub.api.replica.ReadRouter` still covers clients that echo nothing but come back
to the same process.

Why a mark is safe to accept from a client:

- It is only a routing hint, and only ever in one direction: it can move a read from the replica
  to the primary, never the other way. Both hold the same rows, and every query filters on the
  ``student_id`` of the verified bearer token, so no mark, forged or not, can show anyone data
  they could not read anyway.
- It is signed (HMAC-SHA256 with a key derived from the API's token secret, which every worker
  already has) over the student it was issued to: a made-up mark (e.g. an LSN far in the future,
  to keep one's reads on the primary forever), a mark changed in transit or another student's
  mark (a shared browser) is ignored, and the read is routed as if there were none.
- It expires (``read_your_writes_mark_ttl_s``, at least twice the lag bound): a replica that has
  not replayed a commit that old lags beyond the bound, so every read goes to the primary anyway.
- It holds no personal data: the student id is inside the MAC, not in the mark.

Format: ``1.<lsn hex>.<expiry, epoch seconds hex>.<base64url of 16 MAC bytes>``; an LSN of 0
means "commit position unknown: the primary until expiry".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

MARK_HEADER = "X-StudyHub-Read-After"
MARK_COOKIE = "studyhub_read_after"
VERSION = "1"
MAC_BYTES = 16
MAX_MARK_CHARS = 100  # anything longer is not ours: ignored without parsing


@dataclass(frozen=True)
class ReadAfter:
    """What a student's next reads must see: the replica must have replayed ``lsn``; ``lsn``
    0 means it is unknown, so the primary serves them until ``expires_at`` (epoch seconds)."""

    lsn: int
    expires_at: float

    def merge(self, other: ReadAfter | None) -> ReadAfter:
        """The stricter of two marks (header and cookie)."""
        if other is None:
            return self
        if (self.lsn == 0) != (other.lsn == 0):
            return self if self.lsn == 0 else other  # "unknown: primary" beats any LSN
        return ReadAfter(max(self.lsn, other.lsn), max(self.expires_at, other.expires_at))


class ReadMarks:
    """Issues and verifies read marks, bound to a student by an HMAC."""

    def __init__(self, token_secret: str, ttl_s: float) -> None:
        # A key of its own (derived, not the JWT key): a mark and a bearer token can never be
        # mistaken for each other.
        self._key = hmac.new(token_secret.encode(), b"studyhub read-your-writes mark v1",
                             hashlib.sha256).digest()
        self.ttl_s = ttl_s

    def _mac(self, body: str, student_id: uuid.UUID) -> str:
        digest = hmac.new(self._key, f"{body}.{student_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:MAC_BYTES]).rstrip(b"=").decode()

    def issue(self, student_id: uuid.UUID, lsn: int | None, *, unknown_lsn_pin_s: float,
              now: float | None = None) -> str:
        """A mark for ``student_id`` after a commit at ``lsn`` (None: position unknown, keep
        their reads on the primary for ``unknown_lsn_pin_s``)."""
        now = time.time() if now is None else now
        expires = int(now + (self.ttl_s if lsn else unknown_lsn_pin_s)) + 1
        body = f"{VERSION}.{lsn or 0:x}.{expires:x}"
        return f"{body}.{self._mac(body, student_id)}"

    def verify(self, value: str | None, student_id: uuid.UUID,
               now: float | None = None) -> ReadAfter | None:
        """The mark's requirement if it is genuine, issued to ``student_id`` and not expired;
        else None (the read is routed as if no mark had been sent)."""
        if not value or len(value) > MAX_MARK_CHARS:
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._mac(body, student_id)):
            return None
        try:
            lsn, expires = int(parts[1], 16), int(parts[2], 16)
        except ValueError:
            return None
        if expires < (time.time() if now is None else now):
            return None
        return ReadAfter(lsn, float(expires))
