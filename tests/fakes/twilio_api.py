"""A local stand-in for Twilio's Messages API, answering the real SDK with Twilio's JSON shapes."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "fake-auth-token"
POOL_NUMBER = "+15005550006"
"""The sender a messaging service 'picks' for messages sent without a From."""

_MESSAGES_PATH = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>AC\w+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")

ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


class FakeTwilio:
    """Twilio's POST .../Messages.json on 127.0.0.1, with error injection; use as a context."""

    def __init__(
        self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN
    ):
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._next_failures: deque[tuple[int, int]] = deque()
        self._failures_for: dict[str, tuple[int, int]] = {}
        self._lost_answers: deque[float | None] = deque()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL to hand to TwilioGateway(base_url=...)."""
        if self._server is None:
            raise RuntimeError("FakeTwilio is not running; use it in a with block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def settings(self, from_number: str = "+15005550006") -> dict[str, str]:
        """The app settings that choose the Twilio backend and point it at this fake."""
        return {
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_FROM_NUMBER": from_number,
            "TWILIO_API_BASE_URL": self.url,
        }

    def __enter__(self) -> FakeTwilio:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            # A short poll keeps shutdown, and so each test's teardown, quick.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail_next(self, code: int, status: int = 400, times: int = 1) -> None:
        """Answer the next `times` sends, to anyone, with this Twilio error."""
        with self._lock:
            self._next_failures.extend([(code, status)] * times)

    def fail_for(self, to_number: str, code: int, status: int = 400) -> None:
        """Answer every send to this number with this Twilio error."""
        with self._lock:
            self._failures_for[to_number] = (code, status)

    def answer_late(self, seconds: float, times: int = 1) -> None:
        """Accept the next `times` messages, but hold each answer back this long (a timeout)."""
        with self._lock:
            self._lost_answers.extend([seconds] * times)

    def hang_up_after_accepting(self, times: int = 1) -> None:
        """Accept the next `times` messages, then close the connection without answering."""
        with self._lock:
            self._lost_answers.extend([None] * times)

    def _lost_answer(self) -> tuple[bool, float | None]:
        """Whether the next accepted message's answer goes astray, and how late (None: never)."""
        with self._lock:
            if not self._lost_answers:
                return False, None
            return True, self._lost_answers.popleft()

    def deliver(self, sid: str, status: str = "delivered", error_code: int | None = None) -> dict:
        """Mark a message delivered (or failed) and return the status callback form Twilio posts."""
        with self._lock:
            message = next(m for m in self.messages if m["sid"] == sid)
            message["status"] = status
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": message["from"] or POOL_NUMBER,
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": message["to"],
        }
        if message["messaging_service_sid"]:
            params["MessagingServiceSid"] = message["messaging_service_sid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return params

    def _injected_failure(self, to: str) -> tuple[int, int] | None:
        with self._lock:
            if self._next_failures:
                return self._next_failures.popleft()
            return self._failures_for.get(to)

    def _create_message(self, form: dict[str, str]) -> tuple[int, dict]:
        to = form.get("To", "")
        injected = self._injected_failure(to)
        if injected:
            return self._error(*injected, to=to)
        if not to:
            return self._error(21604, 400)
        if not _E164.match(to):
            return self._error(21211, 400, to=to)
        if not form.get("Body"):
            return self._error(21602, 400)
        service_sid = form.get("MessagingServiceSid")
        if not form.get("From") and not service_sid:
            return self._error(21603, 400)

        sid = "SM" + uuid.uuid4().hex
        now = datetime.now(UTC)
        message = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": form.get("From"),
            "messaging_service_sid": service_sid,
            "body": form["Body"],
            "status_callback": form.get("StatusCallback"),
            # A messaging service accepts first and picks a sender later; a number queues at once.
            "status": "accepted" if service_sid else "queued",
            "date": now,
        }
        with self._lock:
            self.messages.append(message)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        return 201, {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": message["body"],
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": message["from"],
            "messaging_service_sid": service_sid,
            "num_media": "0",
            "num_segments": "0" if service_sid else "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": message["status"],
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": to,
            "uri": f"{uri}.json",
        }

    @staticmethod
    def _error(code: int, status: int, *, to: str = "") -> tuple[int, dict]:
        message = ERROR_MESSAGES.get(code, f"Error {code}").format(to=to)
        return status, {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == self.account_sid and password == self.auth_token


def _handler_for(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so the SDK's pooled connection is reused
        disable_nagle_algorithm = True
        timeout = 30  # ends the thread behind a keep-alive connection left idle

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if not fake._authorized(self.headers.get("Authorization")):
                self._answer(*fake._error(20003, 401))
                return
            match = _MESSAGES_PATH.match(self.path)
            if not match or match["account"] != fake.account_sid:
                self._answer(*fake._error(20404, 404))
                return
            form = {key: values[-1] for key, values in parse_qs(raw).items()}
            status, payload = fake._create_message(form)
            lost, delay = fake._lost_answer() if status == 201 else (False, None)
            if lost and delay is None:
                self.close_connection = True  # the message exists; its answer never leaves
                return
            if lost:
                time.sleep(delay)
            try:
                self._answer(status, payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up waiting

        def do_GET(self) -> None:
            self._answer(*fake._error(20404, 404))

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests stay quiet; fake.messages is the record

    return Handler
