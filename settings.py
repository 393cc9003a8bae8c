"""Settings: every default in one place, each read from the environment by the same name.

`.env.example` documents each one for operators; this module is the source of truth for code.
check() parses every one when a process starts (web, worker, cron) and refuses a bad one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from redis.connection import parse_url as parse_redis_url

import money
from jobs.schedule import (
    QuietHours,
    parse_business_hours,
    parse_clock,
    parse_offsets,
    parse_window,
    parse_windows,
    zone_named,
)
from phones import normalize_phone

SECRET_KEY = None
"""Signs sessions, CSRF tokens and card links. Required in production; dev gets a dev key."""

DATABASE_URL = None
"""SQLAlchemy URL. None means a SQLite file under the instance folder."""

REDIS_URL = "redis://127.0.0.1:6379/0"
"""Redis for RQ queues, rate limiting and the sandbox payment processor."""

PUBLIC_BASE_URL = "http://localhost:5000"
"""The URL Twilio and payers reach us at; webhook signatures are checked against it."""

PORT = 5000
"""The web process's port: read by the Procfile's gunicorn --bind, checked here with the rest."""

BIND_ADDRESS = None
"""The web process's address (the Procfile's gunicorn --bind): unset is 0.0.0.0 there."""

TWILIO_ACCOUNT_SID = None
"""Twilio account; with it and the auth token set the SMS backend is Twilio, else console."""

TWILIO_AUTH_TOKEN = None
"""Twilio auth token; also the key X-Twilio-Signature is checked with."""

TWILIO_MESSAGING_SERVICE_SID = None
"""Send through this Messaging Service (preferred for 10DLC), else from TWILIO_FROM_NUMBER."""

TWILIO_FROM_NUMBER = None
"""E.164 sender number when no Messaging Service is set."""

TWILIO_API_BASE_URL = None
"""Point the Twilio SDK at another host (tests and benchmarks use a local fake). Leave unset."""

STRIPE_SECRET_KEY = None
"""Stripe secret key; with it set the payment backend is Stripe, else the offline sandbox."""

STRIPE_PUBLISHABLE_KEY = None
"""Stripe publishable key for the card page (Stripe.js)."""

STRIPE_WEBHOOK_SECRET = None
"""Signing secret of the Stripe webhook endpoint (whsec_...). Required with the Stripe backend."""

STRIPE_API_BASE_URL = None
"""Point the Stripe SDK at another host (tests use a local fake). Leave unset."""

AGENCY_NAME = "PayText Child Support"
"""Name payers see in every text; keep it under 40 characters so replies fit two SMS segments."""

AGENCY_PHONE = "800-555-0134"
"""Phone number payers can call; named in HELP and in replies to unknown numbers."""

BUSINESS_HOURS = "Mon-Fri 08:30-16:30"
"""When staff answer AGENT requests, in each payer's local time."""

DEFAULT_TIMEZONE = "America/New_York"
"""Payers' time zone when neither the case nor the phone number tells us one.

Also the staff pages' zone for agency-wide figures (the dashboard's days, sign-in locks) and for
a case page whose case names no valid zone; a case page otherwise shows the case's own zone.
"""

QUIET_HOURS = "08:00-21:00"
"""The local window in which texts may be sent (reminders, and opt-in invitations alike)."""

QUIET_HOURS_BY_STATE = "FL=08:00-20:00,OK=08:00-20:00"
"""Stricter windows per US state (state telemarketing rules), as STATE=HH:MM-HH:MM pairs."""

REMINDER_OFFSETS = "due_soon=-3,due_today=0,overdue=1"
"""Days from the due date for each due-cycle reminder."""

REMINDER_SEND_TIME = "10:00"
"""Local time of day at which due-cycle reminders go out."""

SMS_RATE_PER_SECOND = 30
"""Messages per second the sender may take, shared by all workers (Twilio queues the rest)."""

REMINDER_DISPATCH_SECONDS = 60
"""How often `rq cron` runs the reminder dispatch, which sends held invitations too (seconds)."""

MAX_PAYMENT = "5000.00"
"""Largest single payment by text, in dollars."""

MONTHLY_PAYMENT_CAP = "10000.00"
"""Most a case may pay by text in one calendar month, in dollars."""

CONSENT_VERSION = "2026-11"
"""Version of the consent wording shown at enrollment; stored with every consent record."""

JOBS_TOKEN = None
"""Bearer token for POST /jobs/... triggers used by an external scheduler. Unset disables them."""

CARD_LINK_TTL_MINUTES = 60
"""How long a card link stays valid."""

TRUSTED_PROXIES = 0
"""Proxies in front of the app whose X-Forwarded-For names the client (1 behind a platform router).

Sign-in failures are counted per client address: with 0 every request is taken to come from
the address that connected, and X-Forwarded-For (which anyone can send) is ignored.
"""

MAX_UPLOAD_MB = 5
"""Largest request body the app accepts, in megabytes (the admin CSV upload); larger gets 413."""

LOG_LEVEL = "INFO"
"""Log level for the web process and workers."""

RQ_ASYNC = True
"""False runs jobs in-process at enqueue time (tests only)."""

NAMES = [name for name in list(globals()) if name.isupper() and name != "NAMES"]
DEFAULTS = {name: globals()[name] for name in NAMES}


def defaults() -> dict[str, Any]:
    """Every setting at its default value."""
    return dict(DEFAULTS)


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings present in the environment, as text; empty strings are unset. See check()."""
    environ = os.environ if environ is None else environ
    found: dict[str, str] = {}
    for name in NAMES:
        raw = environ.get(name)
        if raw is not None and raw.strip():
            found[name] = raw.strip()
    return found


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting, from the defaults and the environment, checked (for processes with no app)."""
    return check({**defaults(), **from_environ(environ)})


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the service refuses to start."""


# --- checking ----------------------------------------------------------------------------------
# Every setting is parsed once, when a process starts, by the function the code parses it with
# later: a value that passes here cannot fail there. A typo used to surface only when the value
# was first used, as "Sorry, we could not process your message" to every text or a 500 on every
# staff page, while /healthz said ok.

Parse = Callable[[Any], Any]
"""Takes a setting's value (text from the environment, or typed in a test's config) and returns
the value the code reads; raises ValueError saying what is allowed."""


def _text(value: Any) -> str | None:
    """Text with no rule of ours (credentials and tokens: their provider checks them)."""
    text = "" if value is None else str(value).strip()
    return text or None


def _optional(parse: Parse) -> Parse:
    def optional(value: Any) -> Any:
        return None if value is None or str(value).strip() == "" else parse(value)

    return optional


def _checked_by(parse: Callable[[str], object]) -> Parse:
    """Text that `parse`, the function the code reads it with, accepts; kept as text."""

    def check(value: Any) -> str:
        text = "" if value is None else str(value).strip()
        parse(text)
        return text

    return check


def _whole_number(minimum: int, maximum: int = 999_999_999) -> Parse:
    allowed = f" from {minimum} to {maximum}" if maximum < 999_999_999 else f", {minimum} or more"

    def parse(value: Any) -> int:
        text = str(value).strip()
        number = int(text) if re.fullmatch(r"[+-]?\d{1,9}", text) else None
        if isinstance(value, bool) or number is None or not minimum <= number <= maximum:
            raise ValueError(f"must be a whole number{allowed}")
        return number

    return parse


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError("must be true or false (or 1/0, yes/no, on/off)")
    return text in _TRUE


def _characters(most: int) -> Parse:
    def parse(value: Any) -> str:
        text = "" if value is None else str(value).strip()
        if not 0 < len(text) <= most:
            raise ValueError(f"must be 1 to {most} characters, has {len(text)}")
        return text

    return parse


def _phone(text: str) -> None:
    normalize_phone(text)


def _dollars(text: str) -> None:
    if money.parse_dollars(text, allow_zero=False) > money.MAX_AMOUNT_CENTS:
        raise ValueError(f"{text!r} is more than {money.format_cents(money.MAX_AMOUNT_CENTS)}")


def _log_level(value: Any) -> str:
    name = str(value).strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return name


def _database_url(value: Any) -> str:
    try:
        backend = sa.make_url(str(value).strip()).get_backend_name()
    except sa.exc.ArgumentError:
        backend = None
    if backend not in ("postgresql", "sqlite"):
        raise ValueError("must be a postgresql://user:password@host/name or sqlite:///path URL")
    return str(value).strip()


def _redis_url(value: Any) -> str:
    parse_redis_url(str(value).strip())  # as Redis.from_url will
    return str(value).strip()


def _web_url(value: Any) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
        usable = parts.scheme in ("http", "https") and parts.hostname
    except ValueError:
        usable = False
    if not usable or parts.query or parts.fragment:
        raise ValueError("must be an http:// or https:// URL like https://pay.example.gov")
    return text


def _e164(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"\+[1-9]\d{7,14}", text):
        raise ValueError("must be an E.164 number like +16175550100")
    return text


def _bind_address(value: Any) -> str:
    text = str(value).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", text):
            raise ValueError(
                "must be an address like 0.0.0.0 or 127.0.0.1, or a host name"
            ) from None
    return text


CHECKS: dict[str, Parse] = {
    "SECRET_KEY": _text,
    "DATABASE_URL": _optional(_database_url),
    "REDIS_URL": _redis_url,
    "PUBLIC_BASE_URL": _web_url,
    "PORT": _whole_number(1, 65535),
    "BIND_ADDRESS": _optional(_bind_address),
    "TWILIO_ACCOUNT_SID": _text,
    "TWILIO_AUTH_TOKEN": _text,
    "TWILIO_MESSAGING_SERVICE_SID": _text,
    "TWILIO_FROM_NUMBER": _optional(_e164),
    "TWILIO_API_BASE_URL": _optional(_web_url),
    "STRIPE_SECRET_KEY": _text,
    "STRIPE_PUBLISHABLE_KEY": _text,
    "STRIPE_WEBHOOK_SECRET": _text,
    "STRIPE_API_BASE_URL": _optional(_web_url),
    "AGENCY_NAME": _characters(40),  # the longest the catalogue's two-segment tests allow
    "AGENCY_PHONE": _checked_by(_phone),
    "BUSINESS_HOURS": _checked_by(parse_business_hours),
    "DEFAULT_TIMEZONE": _checked_by(zone_named),
    "QUIET_HOURS": _checked_by(parse_window),
    "QUIET_HOURS_BY_STATE": _checked_by(parse_windows),
    "REMINDER_OFFSETS": _checked_by(parse_offsets),
    "REMINDER_SEND_TIME": _checked_by(parse_clock),
    "SMS_RATE_PER_SECOND": _whole_number(1),
    "REMINDER_DISPATCH_SECONDS": _whole_number(1),
    "MAX_PAYMENT": _checked_by(_dollars),
    "MONTHLY_PAYMENT_CAP": _checked_by(_dollars),
    "CONSENT_VERSION": _characters(32),  # its column's width
    "JOBS_TOKEN": _text,
    "CARD_LINK_TTL_MINUTES": _whole_number(1),
    "TRUSTED_PROXIES": _whole_number(0),
    "MAX_UPLOAD_MB": _whole_number(1),
    "LOG_LEVEL": _log_level,
    "RQ_ASYNC": _flag,
}
"""How each setting is parsed; every name in NAMES has one (tests/test_settings.py holds to it)."""

_SECRET_URL = re.compile(r"(//[^/@:]*:)[^/@]*@")


def _shown(value: Any) -> str:
    """The value as a message may show it: a password in a URL is masked."""
    return repr(_SECRET_URL.sub(r"\1***@", value) if isinstance(value, str) else value)


def check(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting parsed to the value the code reads; SettingsError naming each bad one."""
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for name in NAMES:
        value = config.get(name)
        try:
            checked[name] = CHECKS[name](value)
        except ValueError as exc:
            default = DEFAULTS[name]
            default = str(default).lower() if isinstance(default, bool) else default
            example = f" (for example {name}={default})" if default is not None else ""
            problems.append(f"{name}={_shown(value)} is not allowed: {exc}{example}")
    if "QUIET_HOURS" in checked and "QUIET_HOURS_BY_STATE" in checked:
        try:
            QuietHours(
                default=parse_window(checked["QUIET_HOURS"]),
                by_state=parse_windows(checked["QUIET_HOURS_BY_STATE"]),
            )
        except ValueError as exc:
            problems.append(
                f"QUIET_HOURS_BY_STATE={_shown(checked['QUIET_HOURS_BY_STATE'])} is not allowed "
                f"with QUIET_HOURS={_shown(checked['QUIET_HOURS'])}: {exc}"
            )
    if problems:
        raise SettingsError("\n".join(problems))
    return checked


def sqlite_url(instance_path: str) -> str:
    """The default database: a SQLite file in the instance folder."""
    return f"sqlite:///{Path(instance_path) / 'paytext.sqlite3'}"
