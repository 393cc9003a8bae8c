import logging

import pytest

from app import create_app
from settings import SettingsError, from_environ


def test_healthz_reports_database_and_redis_reachable(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["database"] == "ok" and body["redis"] == "ok"
    assert (body["sms_backend"], body["payment_backend"]) == ("console", "sandbox")


def test_healthz_says_degraded_when_redis_is_down(config):
    config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    response = create_app(config).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["redis"].startswith("error")


def test_without_credentials_the_backends_are_console_and_sandbox_and_say_so(config, caplog):
    with caplog.at_level(logging.INFO, logger="paytext"):
        app = create_app(config)
    assert app.extensions["sms"].name == "console"
    assert app.extensions["payments"].name == "sandbox"
    assert "SMS backend: console; payment backend: sandbox" in caplog.text
    assert "Twilio signature checks are off" in caplog.text


def production(config, **overrides):
    config.update(TESTING=False, DEBUG=False, **overrides)
    return config


def test_production_without_a_secret_key_refuses_to_start(config):
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        create_app(
            production(
                config,
                SECRET_KEY=None,
                STRIPE_SECRET_KEY="sk_test_x",
                STRIPE_WEBHOOK_SECRET="whsec_x",
            )
        )


def test_stripe_without_a_webhook_secret_refuses_to_start_in_production(config):
    with pytest.raises(SettingsError, match="STRIPE_WEBHOOK_SECRET"):
        create_app(production(config, STRIPE_SECRET_KEY="sk_test_x", STRIPE_WEBHOOK_SECRET=None))


def test_twilio_needs_a_sender(config):
    with pytest.raises(SettingsError, match="TWILIO_FROM_NUMBER"):
        create_app(production(config, TWILIO_ACCOUNT_SID="AC1", TWILIO_AUTH_TOKEN="t"))


def test_development_without_a_secret_key_gets_a_dev_key(config):
    config["SECRET_KEY"] = None
    assert create_app(config).config["SECRET_KEY"]


def test_settings_come_from_the_environment_with_types():
    found = from_environ({"AGENCY_NAME": " Demo ", "SMS_RATE_PER_SECOND": "50", "JOBS_TOKEN": ""})
    assert found == {"AGENCY_NAME": "Demo", "SMS_RATE_PER_SECOND": 50}
    with pytest.raises(SettingsError, match="SMS_RATE_PER_SECOND"):
        from_environ({"SMS_RATE_PER_SECOND": "fast"})


def test_env_example_documents_every_setting():
    from pathlib import Path

    import settings

    documented = Path(__file__).parents[1].joinpath(".env.example").read_text()
    missing = [name for name in settings.NAMES if f"{name}=" not in documented]
    assert missing == []
