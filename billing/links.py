"""Signed, expiring links texted to payers: add a card, or approve a payment their bank held.

A token is 35 URL-safe characters: the subject id, the expiry and a random nonce, with a
truncated HMAC-SHA256 over them keyed from SECRET_KEY and the link's kind. It is built by hand
rather than with itsdangerous because every character counts in a text that must fit two SMS
segments. Card links are single-use: the nonce is claimed in Redis when a card is saved.

A token is never stored or logged: the stored copy of a text has it masked (bot.redact), and a
stored text sent later (a queued text, a reply Twilio asks for again) gets new links made by
with_new_links for the case or payment its turn is logged on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from flask import current_app

from bot.redact import LINK_MARKER
from models import utcnow

log = logging.getLogger(__name__)

MAC_BYTES = 12
"""96 bits of HMAC-SHA256: as much as TLS keeps, and short enough for a text."""

NONCE_BYTES = 6
"""Tells apart links for the same case; only needs to be unique within a link's lifetime."""

AUTH_LINK_TTL = timedelta(hours=24)
"""How long a link to approve a held payment works; the payer may read the text the next day."""

USED_PREFIX = "paytext:link-used:"
"""Redis keys that mark a single-use link as spent."""

_LAYOUT = struct.Struct(f">II{NONCE_BYTES}s")


class LinkKind(StrEnum):
    """What a link lets its holder do; a token for one kind never opens another."""

    CARD = "card"
    AUTH = "auth"


class LinkError(ValueError):
    """A link that is forged, mangled, for another purpose, or out of date.

    `subject_id` is set only for a genuine link that expired, so its page can still be shown in
    the payer's language.
    """

    def __init__(self, message: str, *, code: str, subject_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.subject_id = subject_id


@dataclass(frozen=True)
class Link:
    """What a verified token says."""

    kind: LinkKind
    subject_id: int
    expires_at: datetime
    nonce: str


def make_token(*, secret: str, kind: LinkKind, subject_id: int, expires_at: datetime) -> str:
    """A token naming subject_id (a case or payment id) valid until expires_at."""
    if not secret:
        raise ValueError("cannot sign links without a secret key")
    body = _LAYOUT.pack(subject_id, int(expires_at.timestamp()), secrets.token_bytes(NONCE_BYTES))
    return _b64(body + _mac(secret, kind, body))


def read_token(*, secret: str, kind: LinkKind, token: str, now: datetime) -> Link:
    """Verify a token of this kind; raise LinkError(code='invalid' or 'expired')."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise LinkError("The link is not valid", code="invalid") from None
    body, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
    # Base64 ignores unused trailing bits, so two spellings decode alike: accept only ours.
    canonical = _b64(raw) == token
    if (
        not canonical
        or len(raw) != _LAYOUT.size + MAC_BYTES
        or not hmac.compare_digest(mac, _mac(secret, kind, body))
    ):
        raise LinkError("The link is not valid", code="invalid")
    subject_id, expires, nonce = _LAYOUT.unpack(body)
    expires_at = datetime.fromtimestamp(expires, UTC)
    if now >= expires_at:
        raise LinkError("The link has expired", code="expired", subject_id=subject_id)
    return Link(kind=kind, subject_id=subject_id, expires_at=expires_at, nonce=nonce.hex())


def card_link_url(*, case_id: int) -> str:
    """An absolute, single-use, expiring link where the payer saves a card on this case."""
    return _url(LinkKind.CARD, case_id)


def auth_link_url(*, payment_id: int) -> str:
    """An absolute, expiring link where the payer approves a payment their bank held."""
    return _url(LinkKind.AUTH, payment_id)


_MASKED = re.compile(rf"/pay/({LinkKind.CARD}|{LinkKind.AUTH})/{re.escape(LINK_MARKER)}")


def with_new_links(text: str, *, case_id: int | None, payment_id: int | None) -> str:
    """A stored text ready to go: each masked link made again, for the case (a card link) or
    the payment (an approval link) its turn is logged on, valid for its full time from now."""

    def made_again(match: re.Match) -> str:
        kind = LinkKind(match.group(1))
        subject_id = case_id if kind is LinkKind.CARD else payment_id
        if subject_id is None:
            # Not made by PayText's own texts, which log a link's case or payment on its turn.
            log.error("a %s link cannot be made again for a turn without its subject", kind)
            return match.group(0)
        return f"/pay/{kind}/{_token(kind, subject_id)}"

    if LINK_MARKER not in text:
        return text
    return _MASKED.sub(made_again, text)


def verify(kind: LinkKind, token: str) -> Link:
    """Read a token from a request with the app's secret; LinkError if it does not hold."""
    return read_token(secret=current_app.config["SECRET_KEY"], kind=kind, token=token, now=utcnow())


def is_used(link: Link) -> bool:
    """True once a single-use link has done its job."""
    return bool(current_app.extensions["redis"].exists(_used_key(link)))


def claim(link: Link) -> bool:
    """Mark a single-use link spent; False if another request got there first."""
    seconds = max(int((link.expires_at - utcnow()).total_seconds()), 0) + 60
    return bool(current_app.extensions["redis"].set(_used_key(link), 1, nx=True, ex=seconds))


def release(link: Link) -> None:
    """Give a claimed link back after the work it was claimed for failed, so the payer can retry."""
    current_app.extensions["redis"].delete(_used_key(link))


def _token(kind: LinkKind, subject_id: int) -> str:
    if kind is LinkKind.CARD:
        ttl = timedelta(minutes=int(current_app.config["CARD_LINK_TTL_MINUTES"]))
    else:
        ttl = AUTH_LINK_TTL
    return make_token(
        secret=current_app.config["SECRET_KEY"],
        kind=kind,
        subject_id=subject_id,
        expires_at=utcnow() + ttl,
    )


def _url(kind: LinkKind, subject_id: int) -> str:
    base = str(current_app.config["PUBLIC_BASE_URL"]).rstrip("/")
    return f"{base}/pay/{kind}/{_token(kind, subject_id)}"


def _used_key(link: Link) -> str:
    return f"{USED_PREFIX}{link.kind}:{link.nonce}"


def _mac(secret: str, kind: LinkKind, body: bytes) -> bytes:
    # A key per kind: a card token can never verify as an auth token for the same id.
    key = hmac.new(secret.encode(), f"paytext-link:{kind}".encode(), hashlib.sha256).digest()
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
