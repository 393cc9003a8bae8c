"""Settings: every default in one place, each read from the environment by the same name.

`.env.example` documents each one for operators; this module is the source of truth for code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECRET_KEY = None
"""Signs sessions, CSRF tokens and card links. Required in production; dev gets a dev key."""

DATABASE_URL = None
"""SQLAlchemy URL. None means a SQLite file under the instance folder."""

REDIS_URL = "redis://127.0.0.1:6379/0"
"""Redis for RQ queues, rate limiting and the sandbox payment processor."""

PUBLIC_BASE_URL = "http://localhost:5000"
"""The URL Twilio and payers reach us at; webhook signatures are checked against it."""

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
"""The local window in which texts may be sent."""

QUIET_HOURS_BY_STATE = "FL=08:00-20:00,OK=08:00-20:00"
"""Stricter windows per US state (state telemarketing rules), as STATE=HH:MM-HH:MM pairs."""

REMINDER_OFFSETS = "due_soon=-3,due_today=0,overdue=1"
"""Days from the due date for each due-cycle reminder."""

REMINDER_SEND_TIME = "10:00"
"""Local time of day at which due-cycle reminders go out."""

SMS_RATE_PER_SECOND = 30
"""Messages per second the sender may take, shared by all workers (Twilio queues the rest)."""

REMINDER_DISPATCH_SECONDS = 60
"""How often `rq cron` runs the reminder dispatch (seconds)."""

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
INT_SETTINGS = {
    "SMS_RATE_PER_SECOND",
    "REMINDER_DISPATCH_SECONDS",
    "CARD_LINK_TTL_MINUTES",
    "MAX_UPLOAD_MB",
    "TRUSTED_PROXIES",
}
BOOL_SETTINGS = {"RQ_ASYNC"}


def defaults() -> dict[str, Any]:
    """Every setting at its default value."""
    return {name: globals()[name] for name in NAMES}


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings present in the environment, converted to their types; empty strings are unset."""
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name in NAMES:
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        raw = raw.strip()
        if name in INT_SETTINGS:
            try:
                found[name] = int(raw)
            except ValueError as exc:
                raise SettingsError(f"{name} must be a whole number, got {raw!r}") from exc
        elif name in BOOL_SETTINGS:
            found[name] = raw.lower() in {"1", "true", "yes", "on"}
        else:
            found[name] = raw
    return found


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the service refuses to start."""


def sqlite_url(instance_path: str) -> str:
    """The default database: a SQLite file in the instance folder."""
    return f"sqlite:///{Path(instance_path) / 'paytext.sqlite3'}"
