"""The Twilio boundary: send SMS, check webhook signatures, answer with TwiML.

This is the only module that imports twilio; everything else talks to an SmsGateway.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any, Protocol, runtime_checkable

import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from bot.redact import link_tokens_masked

log = logging.getLogger(__name__)

TWIML_CONTENT_TYPE = "text/xml; charset=utf-8"
SIGNATURE_HEADER = "X-Twilio-Signature"


class Failure(StrEnum):
    """What a failed send means for the next attempt."""

    TRANSIENT = "transient"
    OPTED_OUT = "opted_out"
    UNDELIVERABLE = "undeliverable"
    PERMANENT = "permanent"
    # The request may have reached Twilio and the text may have gone: sending it again could
    # text the payer twice, and Twilio's API has no idempotency key to ask.
    UNKNOWN = "unknown"


# 30001 (queue overflow) and 30008 (unknown carrier error) come in delivery reports; Twilio's
# advice for both is to try again later.
_TRANSIENT_CODES = frozenset({20429, 30001, 30003, 30008})
_OPTED_OUT_CODES = frozenset({21610})
_UNDELIVERABLE_CODES = frozenset({21211, 21614, 30005, 30006})


def classify(error_code: int | None, http_status: int | None) -> Failure:
    """Classify a send error by Twilio error code, then by HTTP status."""
    if error_code in _OPTED_OUT_CODES:
        return Failure.OPTED_OUT
    if error_code in _UNDELIVERABLE_CODES:
        return Failure.UNDELIVERABLE
    if error_code in _TRANSIENT_CODES:
        return Failure.TRANSIENT
    if http_status is None:
        # No code and no status: no answer came, so the message may have been created. A code
        # without a status is a delivery report, and an unknown one is not worth retrying.
        return Failure.UNKNOWN if error_code is None else Failure.PERMANENT
    if http_status == 429:
        return Failure.TRANSIENT  # refused before anything was created: slow down and retry
    if http_status >= 500:
        # Twilio (or a proxy in front of it) failed while handling the request, perhaps after
        # creating the message.
        return Failure.UNKNOWN
    return Failure.PERMANENT


def classify_network_error(exc: requests.RequestException) -> Failure:
    """Transient only when no connection to Twilio was ever made, else the outcome is unknown.

    A refused connection, a failed DNS lookup or a connect timeout sent nothing, so retrying is
    safe. A read timeout or a connection dropped after the request went out may follow a
    message Twilio already accepted.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return Failure.TRANSIENT
    # urllib3 reports a connection it could not open (NameResolutionError is one) as the reason
    # of the MaxRetryError that requests wraps.
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return Failure.TRANSIENT if isinstance(reason, NewConnectionError) else Failure.UNKNOWN


@dataclass(frozen=True)
class SendResult:
    """What the provider said about one outgoing message."""

    ok: bool
    sid: str | None = None
    status: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    failure: Failure | None = None

    @property
    def retryable(self) -> bool:
        """True when the same send may succeed later, and cannot have gone already."""
        return self.failure is Failure.TRANSIENT

    @property
    def outcome_unknown(self) -> bool:
        """True when the text may have gone although no answer says so: never send it again."""
        return self.failure is Failure.UNKNOWN


def _failed(
    error_code: int | None, message: str, http_status: int | None, failure: Failure | None = None
) -> SendResult:
    failure = failure or classify(error_code, http_status)
    if failure is Failure.UNKNOWN:
        # Staff read this where the text is logged; it should stop them sending it again.
        message = f"no answer from Twilio, the text may have gone: {message}"
    return SendResult(ok=False, error_code=error_code, error_message=message, failure=failure)


@runtime_checkable
class SmsGateway(Protocol):
    """Anything that can send one SMS and report the outcome without raising."""

    name: str

    def send(self, *, to: str, body: str, status_callback: str | None = None) -> SendResult:
        """Send one message."""
        ...


class TwilioGateway:
    """Sends through Twilio's Messages API with the official SDK."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        messaging_service_sid: str | None = None,
        from_number: str | None = None,
        base_url: str | None = None,
        timeout: float = 10,
    ):
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs an account SID and an auth token")
        if not messaging_service_sid and not from_number:
            raise ValueError("Twilio needs a messaging service SID or a from number")
        self._account_sid = account_sid
        self._auth_token = auth_token
        # A messaging service picks the sender itself, so it wins when both are configured.
        self._sender = (
            {"messaging_service_sid": messaging_service_sid}
            if messaging_service_sid
            else {"from_": from_number}
        )
        self._base_url = base_url.rstrip("/") if base_url else None
        self._timeout = timeout
        self._local = threading.local()

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            # One client per thread: the SDK's HTTP client keeps the last response on itself, so
            # threads sharing one could read each other's answers. Each keeps its own
            # keep-alive connection pool.
            http_client = TwilioHttpClient(pool_connections=True, timeout=self._timeout)
            # requests otherwise re-reads proxy settings from the environment on every send.
            http_client.session.trust_env = False
            client = Client(self._account_sid, self._auth_token, http_client=http_client)
            if self._base_url:
                client.api.base_url = self._base_url
                # TWILIO_EDGE/TWILIO_REGION in the environment would rewrite the host.
                client.edge = client.region = None
            self._local.client = client
        return client

    def send(self, *, to: str, body: str, status_callback: str | None = None) -> SendResult:
        """Send one message; provider and network errors come back classified, not raised."""
        try:
            message = self._client().messages.create(
                to=to, body=body, status_callback=status_callback, **self._sender
            )
        except TwilioRestException as exc:
            return _failed(exc.code, exc.msg, exc.status)
        except TwilioServiceException as exc:
            return _failed(exc.code, exc.detail or exc.title, exc.status)
        except requests.RequestException as exc:
            return _failed(None, f"{type(exc).__name__}: {exc}", None, classify_network_error(exc))
        return SendResult(ok=True, sid=message.sid, status=message.status)


@dataclass(frozen=True)
class OutboundSms:
    """One message the console gateway pretended to send."""

    sid: str
    to: str
    body: str
    status_callback: str | None = None


CONSOLE_KEPT_PREFIX = "paytext:console-sms:"
"""Redis keys of the texts with links the console gateway sent, for the phone simulator."""

CONSOLE_KEPT_SECONDS = 24 * 60 * 60
"""How long the simulator can show such a text's links: as long as an approval link works."""


class ConsoleGateway:
    """Development twin of TwilioGateway: logs messages and keeps the latest in memory.

    Its log and stream show link tokens masked, as the stored turns do. Given Redis, it also
    keeps each text that carries a link as it was sent, shared with the web process (the worker
    sends receipts and payment texts), so the phone simulator can show the link to click: the
    console backend's only phone.
    """

    name = "console"

    def __init__(self, stream: IO[str] | None = None, *, keep: int = 100, redis: Any | None = None):
        self.sent: deque[OutboundSms] = deque(maxlen=keep)
        self._stream = stream
        self._redis = redis
        self._lock = threading.Lock()

    def send(self, *, to: str, body: str, status_callback: str | None = None) -> SendResult:
        """Record the message and report it sent."""
        # Same length as a real SID (34), so it fits wherever those are stored.
        sid = "SMconsole" + uuid.uuid4().hex[:25]
        message = OutboundSms(sid=sid, to=to, body=body, status_callback=status_callback)
        shown = link_tokens_masked(body)
        log.info("SMS to %s (%s): %s", to, sid, shown)
        self.keep_delivered(sid, body)
        with self._lock:
            self.sent.append(message)
            if self._stream is not None:
                self._stream.write(f"--> SMS to {to}\n{shown}\n\n")
                self._stream.flush()
        return SendResult(ok=True, sid=sid, status="sent")

    def keep_delivered(self, key: str, body: str) -> None:
        """Keep a text the phone got as it got it, if its stored copy masks a link."""
        if self._redis is not None and link_tokens_masked(body) != body:
            self._redis.set(CONSOLE_KEPT_PREFIX + key, body, ex=CONSOLE_KEPT_SECONDS)

    def delivered(self, key: str) -> str | None:
        """The text kept under `key` (its message SID, or a TwiML reply's key), if any."""
        if self._redis is None:
            return None
        body = self._redis.get(CONSOLE_KEPT_PREFIX + key)
        return body.decode() if isinstance(body, bytes) else body


class Fields(dict[str, list[str]]):
    """A webhook's form fields: each name with all its values, in order (a name may repeat).

    Shaped for RequestValidator, which asks each name for getall() (a werkzeug MultiDict has
    only getlist(): every field of every request cost a raised and caught AttributeError), and
    lighter to build than a MultiDict.
    """

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Fields:
        fields = cls()
        for name, value in pairs:
            if name in fields:
                fields[name].append(value)
            else:
                fields[name] = [value]
        return fields

    def value(self, name: str, default: str = "") -> str:
        """The first value sent for `name`."""
        values = self.get(name)
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        return self[name]


def _validator(auth_token: str) -> RequestValidator:
    if not auth_token:
        # An empty key would make every signature forgeable; refuse rather than accept.
        raise ValueError("cannot check Twilio signatures without an auth token")
    return RequestValidator(auth_token)


def sign(*, auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Compute the X-Twilio-Signature Twilio would send for this URL and form."""
    return _validator(auth_token).compute_signature(url, params)


def validate_signature(
    *, auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """True when the signature matches the full request URL and form fields.

    Pass Flask's request.form as is: a MultiDict keeps repeated fields, which Twilio signs too.
    """
    validator = _validator(auth_token)
    if not signature:
        return False
    # The URL exactly as given first: one HMAC. validate() tries it with and without the port.
    if hmac.compare_digest(validator.compute_signature(url, params), signature):
        return True
    return validator.validate(url, params, signature)


# Characters XML 1.0 cannot carry at all; left in, they would make the whole reply unreadable.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_TWIML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def twiml(messages: Sequence[str]) -> str:
    """A TwiML reply with one <Message> per text, in order; none gives an empty <Response />.

    Written out as twilio's MessagingResponse writes it, the same bytes (a test compares the
    two for any text), without the ElementTree it builds and serialises for every reply: that
    cost about a tenth of a whole BAL's handling.
    """
    if isinstance(messages, str):
        raise TypeError("twiml() takes a sequence of messages, not one string")
    if not messages:
        return _TWIML_HEAD + "<Response />"
    parts = [_TWIML_HEAD, "<Response>"]
    for text in messages:
        text = _XML_ILLEGAL.sub("", text)
        if text:
            # What ElementTree escapes in element text, in the same order.
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            parts.append(f"<Message>{text}</Message>")
        else:
            parts.append("<Message />")
    parts.append("</Response>")
    return "".join(parts)
