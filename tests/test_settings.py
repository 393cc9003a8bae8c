"""Every setting is parsed and checked when a process starts; a bad one stops it, named."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

import settings
from app import create_app
from settings import SettingsError

ROOT = Path(__file__).parents[1]


@pytest.fixture
def base(tmp_path) -> dict:
    """Settings for an app that is built and never connects to anything."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'paytext.sqlite3'}",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }


def env_example() -> dict[str, str]:
    """The NAME=value lines of .env.example, as an operator who copies it gets them."""
    lines = ROOT.joinpath(".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {name.strip(): value for name, value in pairs}


def test_every_setting_has_a_check():
    assert list(settings.CHECKS) == settings.NAMES


def test_the_defaults_pass_and_keep_their_types():
    assert settings.check(settings.defaults()) == settings.defaults()


def test_the_env_example_values_all_pass(base):
    example = env_example()
    assert sorted(set(example) - set(settings.NAMES)) == []
    loaded = settings.load(example)
    assert loaded["PORT"] == 5000 and loaded["RQ_ASYNC"] is True and loaded["LOG_LEVEL"] == "INFO"
    app = create_app({**settings.from_environ(example), **base})
    assert app.config["BUSINESS_HOURS"] == example["BUSINESS_HOURS"]


BAD = [
    ("DATABASE_URL", "mysql://db/paytext", "postgresql://"),
    ("REDIS_URL", "127.0.0.1:6379", "redis://"),
    ("PUBLIC_BASE_URL", "pay.example.gov", "https:// URL"),
    ("PORT", "80a", "from 1 to 65535"),
    ("BIND_ADDRESS", "0.0.0.0:5000", "an address like 0.0.0.0"),
    ("TWILIO_FROM_NUMBER", "617-555-0100", "E.164 number like +16175550100"),
    ("TWILIO_API_BASE_URL", "localhost:8080", "http:// or https:// URL"),
    ("STRIPE_API_BASE_URL", "ftp://stripe.test", "http:// or https:// URL"),
    ("AGENCY_NAME", "San Bernardino County Child Support Services", "1 to 40 characters"),
    ("AGENCY_PHONE", "800-555-013", "not a valid phone number"),
    ("BUSINESS_HOURS", "Mon-Fri 9-5", "'9-5' is not a time range like 08:00-21:00"),
    ("BUSINESS_HOURS", "Mo-Fr 08:30-16:30", "unknown day 'Mo'"),
    ("DEFAULT_TIMEZONE", "America/NewYork", "not an IANA time zone like America/New_York"),
    ("DEFAULT_TIMEZONE", "America", "not an IANA time zone"),
    ("DEFAULT_TIMEZONE", "EST", "not an IANA time zone"),
    ("QUIET_HOURS", "8am-9pm", "not a time range like 08:00-21:00"),
    ("QUIET_HOURS_BY_STATE", "FL=8-20", "not a time range"),
    ("QUIET_HOURS_BY_STATE", "FA=08:00-20:00", "not a US state or territory code"),
    ("QUIET_HOURS_BY_STATE", "FL=21:30-22:00", "does not overlap 08:00-21:00"),
    ("REMINDER_OFFSETS", "duesoon=-3,overdue=1", "KIND=DAYS with KIND one of due_soon"),
    ("REMINDER_OFFSETS", "due_soon=-3d", "whole number of days"),
    ("REMINDER_SEND_TIME", "10am", "24-hour time like 10:00"),
    ("SMS_RATE_PER_SECOND", "0", "whole number, 1 or more"),
    ("REMINDER_DISPATCH_SECONDS", "1m", "whole number, 1 or more"),
    ("MAX_PAYMENT", "0", "is zero"),
    ("MAX_PAYMENT", "$5,000.001", "more than two decimals"),
    ("MONTHLY_PAYMENT_CAP", "abc", "not a dollar amount like 125.00"),
    ("CONSENT_VERSION", "2026-11 (wording of November, revised)", "1 to 32 characters"),
    ("CARD_LINK_TTL_MINUTES", "0", "whole number, 1 or more"),
    ("TRUSTED_PROXIES", "-1", "whole number, 0 or more"),
    ("MAX_UPLOAD_MB", "0", "whole number, 1 or more"),
    ("LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("RQ_ASYNC", "ture", "true or false"),
]


@pytest.mark.parametrize("name, bad, allowed", BAD, ids=[f"{n}={b}" for n, b, _ in BAD])
def test_a_bad_setting_refuses_to_start_naming_it_its_value_and_what_is_allowed(
    base, name, bad, allowed
):
    with pytest.raises(SettingsError) as refused:
        create_app({**base, name: bad})
    message = str(refused.value)
    assert f"{name}={bad!r} is not allowed" in message
    assert allowed in message


def test_only_free_text_settings_have_no_bad_value():
    checked = {name for name, _, _ in BAD}
    free = {name for name, parse in settings.CHECKS.items() if parse is settings._text}
    assert sorted(set(settings.NAMES) - checked - free) == []
    assert free == {
        *("SECRET_KEY", "JOBS_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
        *("TWILIO_MESSAGING_SERVICE_SID", "STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY"),
        "STRIPE_WEBHOOK_SECRET",
    }


def test_settings_from_the_environment_are_checked_and_every_bad_one_is_named(base, monkeypatch):
    monkeypatch.setenv("BUSINESS_HOURS", "Mon-Fri 9-5")
    monkeypatch.setenv("MAX_UPLOAD_MB", "0")
    with pytest.raises(SettingsError) as refused:
        create_app(base)
    lines = str(refused.value).splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["BUSINESS_HOURS", "MAX_UPLOAD_MB"]
    assert "(for example BUSINESS_HOURS=Mon-Fri 08:30-16:30)" in lines[0]


def test_settings_from_the_environment_keep_their_types(base, monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_MB", " 7 ")
    monkeypatch.setenv("RQ_ASYNC", "off")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.setenv("DEFAULT_TIMEZONE", " America/Chicago ")
    config = create_app(base).config
    assert (config["MAX_UPLOAD_MB"], config["MAX_CONTENT_LENGTH"]) == (7, 7 * 1024 * 1024)
    assert config["RQ_ASYNC"] is False and config["LOG_LEVEL"] == "WARNING"
    assert config["DEFAULT_TIMEZONE"] == "America/Chicago"


def test_a_database_password_is_not_shown_when_its_url_is_refused(base):
    with pytest.raises(SettingsError) as refused:
        create_app({**base, "DATABASE_URL": "postgres://paytext:hunter2@db/paytext"})
    assert "hunter2" not in str(refused.value)
    assert "DATABASE_URL='postgres://paytext:***@db/paytext'" in str(refused.value)


def test_the_worker_refuses_to_start_on_a_bad_setting(monkeypatch):
    from jobs import context

    monkeypatch.setattr(context, "_app", None)
    monkeypatch.setenv("DEFAULT_TIMEZONE", "America/NewYork")
    with pytest.raises(SettingsError, match="DEFAULT_TIMEZONE='America/NewYork'"):
        context.worker_app()


def test_the_scheduler_refuses_to_start_on_a_bad_setting(monkeypatch):
    monkeypatch.setenv("REMINDER_DISPATCH_SECONDS", "0")
    with pytest.raises(SettingsError, match="REMINDER_DISPATCH_SECONDS='0'"):
        runpy.run_path(str(ROOT / "jobs" / "cron.py"))
