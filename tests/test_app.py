import logging
import os

import pytest

from app import create_app
from settings import SettingsError, from_environ, load


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


def test_development_without_a_secret_key_gets_a_random_key_kept_for_the_install(
    config, tmp_path, monkeypatch
):
    import flask

    config["SECRET_KEY"] = None
    monkeypatch.setattr(flask.Flask, "auto_find_instance_path", lambda self: str(tmp_path))
    first, again = create_app(config).config["SECRET_KEY"], create_app(config).config["SECRET_KEY"]
    assert first == again == (tmp_path / "dev-secret-key").read_text()
    assert len(first) == 64 and first != "dev-only-not-secret"
    assert (tmp_path / "dev-secret-key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "half", [{"TWILIO_ACCOUNT_SID": "AC1"}, {"TWILIO_AUTH_TOKEN": "token"}], ids=["sid", "token"]
)
def test_half_of_twilios_credentials_refuses_to_start(config, half):
    """The console backend it would fall back to takes unsigned texts from anyone."""
    with pytest.raises(SettingsError, match="TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"):
        create_app({**config, **half})
    with pytest.raises(SettingsError, match="TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"):
        create_app(production(config, **half))


def test_a_live_stripe_key_without_twilio_refuses_to_start(config):
    with pytest.raises(SettingsError, match="live Stripe key needs Twilio"):
        create_app({**config, "STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_WEBHOOK_SECRET": "w"})
    # A test key with the console backend is a developer trying Stripe's test mode.
    app = create_app({**config, "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "w"})
    assert app.extensions["sms"].name == "console"


def test_make_run_listens_on_this_machine_only_and_links_follow_its_port():
    from scripts.run import development_defaults

    environ = {"PORT": "5077", "PUBLIC_BASE_URL": ""}
    development_defaults(environ)
    assert environ["BIND_ADDRESS"] == "127.0.0.1"
    assert environ["PUBLIC_BASE_URL"] == "http://localhost:5077"
    given = {"BIND_ADDRESS": "0.0.0.0", "PUBLIC_BASE_URL": "https://pay.example.gov"}
    development_defaults(given)
    assert given["BIND_ADDRESS"] == "0.0.0.0" and given["PUBLIC_BASE_URL"].startswith("https://")


def test_make_run_and_the_readme_say_how_to_create_the_first_staff_account(runner, session):
    from pathlib import Path

    from scripts.run import staff_account_hint

    hint = staff_account_hint(session)
    command = ".venv/bin/flask admin create-user you@example.org"
    assert hint is not None and command in hint
    readme = Path(__file__).parents[1].joinpath("README.md").read_text()
    set_up = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert command in set_up
    args = command.removeprefix(".venv/bin/flask ").split()
    created = runner.invoke(args=args, input="a-long-password\na-long-password\n")
    assert created.exit_code == 0, created.output
    assert staff_account_hint(session) is None


def test_the_access_log_keeps_card_and_approval_link_tokens_out():
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from accesslog import AccessLogger

    token = "AAAABmsOOWYNjfqkWHDFLfHEgfiu8BNRNWs"
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/pay/card/{token}?x=1",
        "PATH_INFO": f"/pay/card/{token}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": f"https://pay.example.gov/pay/auth/{token}",
    }
    response = SimpleNamespace(status="200 OK", headers=[], sent=10)
    atoms = AccessLogger(Config()).atoms(response, [], environ, timedelta(milliseconds=3))
    assert token not in repr(atoms)
    assert atoms["r"] == "GET /pay/card/[redacted]?x=1 HTTP/1.1"
    assert atoms["f"] == "https://pay.example.gov/pay/auth/[redacted]"
    assert atoms["U"] == "/pay/card/[redacted]" and atoms["s"] == "200"


def test_the_procfile_web_process_uses_the_redacting_access_log():
    from pathlib import Path

    procfile = Path(__file__).parents[1].joinpath("Procfile").read_text()
    (web,) = [line for line in procfile.splitlines() if line.startswith("web:")]
    assert "--logger-class accesslog.AccessLogger" in web and "${BIND_ADDRESS:-0.0.0.0}" in web


def test_settings_come_from_the_environment_with_types():
    environ = {"AGENCY_NAME": " Demo ", "SMS_RATE_PER_SECOND": "50", "JOBS_TOKEN": ""}
    assert from_environ(environ) == {"AGENCY_NAME": "Demo", "SMS_RATE_PER_SECOND": "50"}
    loaded = load(environ)
    assert (loaded["AGENCY_NAME"], loaded["SMS_RATE_PER_SECOND"]) == ("Demo", 50)
    assert loaded["JOBS_TOKEN"] is None
    with pytest.raises(SettingsError, match="SMS_RATE_PER_SECOND"):
        load({"SMS_RATE_PER_SECOND": "fast"})


def test_env_example_documents_every_setting():
    from pathlib import Path

    import settings

    documented = Path(__file__).parents[1].joinpath(".env.example").read_text()
    missing = [name for name in settings.NAMES if f"{name}=" not in documented]
    assert missing == []


def test_the_embedded_redis_is_not_stopped_by_the_terminals_ctrl_c():
    """In a session of its own, it outlives the processes that use it until make run stops it."""
    import os

    from scripts import embedded_redis

    server = embedded_redis.start()
    try:
        assert os.getsid(server.process.pid) != os.getsid(0)
    finally:
        server.stop()


def test_flask_commands_beside_make_run_use_its_embedded_redis(config, tmp_path, monkeypatch):
    """Not whatever Redis answers on the default port: make run's worker would never see jobs."""
    import flask

    from scripts.run import start_embedded_redis, stop_embedded_redis

    instance = tmp_path / "instance"
    instance.mkdir()
    monkeypatch.setattr(flask.Flask, "auto_find_instance_path", lambda self: str(instance))
    monkeypatch.delenv("REDIS_URL", raising=False)
    del config["REDIS_URL"]  # as a `flask` command in another terminal: no REDIS_URL set
    server = start_embedded_redis(instance)
    try:
        embedded = os.environ["REDIS_URL"]
        monkeypatch.delenv("REDIS_URL")
        app = create_app(config)
        assert app.config["REDIS_URL"] == embedded
        assert app.extensions["redis"].ping()
        # A REDIS_URL set by the operator wins.
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6399/2")
        assert create_app(config).config["REDIS_URL"] == "redis://127.0.0.1:6399/2"
    finally:
        stop_embedded_redis(server, instance)
    monkeypatch.delenv("REDIS_URL")
    assert create_app(config).config["REDIS_URL"] == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("left_behind", ["nothing_listens", "something_silent_listens"])
def test_a_redis_url_file_left_by_a_crashed_make_run_is_refused_clearly(
    config, tmp_path, monkeypatch, left_behind
):
    """Not a traceback at the first job, nor a command that waits forever on the port."""
    import socket
    import time

    import flask

    from app import EMBEDDED_REDIS_FILE

    instance = tmp_path / "instance"
    instance.mkdir()
    monkeypatch.setattr(flask.Flask, "auto_find_instance_path", lambda self: str(instance))
    monkeypatch.delenv("REDIS_URL", raising=False)
    del config["REDIS_URL"]
    with socket.socket() as port:
        port.bind(("127.0.0.1", 0))
        if left_behind == "something_silent_listens":
            port.listen()  # accepts connections, never answers
        url = f"redis://127.0.0.1:{port.getsockname()[1]}/0"
        (instance / EMBEDDED_REDIS_FILE).write_text(url + "\n")
        started = time.monotonic()
        with pytest.raises(SettingsError, match=f"{EMBEDDED_REDIS_FILE}.*{url}.*does not answer"):
            create_app(config)
        assert time.monotonic() - started < 10


@pytest.fixture
def make_run_environ(monkeypatch):
    """scripts.run.main()'s environment, restored afterwards; no .env read."""
    import dotenv

    from scripts.run import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(dotenv, "load_dotenv", lambda *args, **kwargs: False)
    for name in ("PORT", "BIND_ADDRESS", "PUBLIC_BASE_URL", "FLASK_DEBUG", "REDIS_URL", "PATH"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    return monkeypatch


def test_make_run_on_a_port_in_use_says_so_before_starting_anything(make_run_environ):
    import socket

    from scripts import run

    def no_redis(*args, **kwargs):
        raise AssertionError("nothing should start on a port in use")

    make_run_environ.setattr(run, "start_embedded_redis", no_redis)
    make_run_environ.setenv("REDIS_URL", "")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        make_run_environ.setenv("PORT", str(port))
        make_run_environ.setenv("BIND_ADDRESS", "127.0.0.1")
        with pytest.raises(SystemExit) as stopped:
            run.main()
    message = str(stopped.value.code)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "PORT=" in message


def test_make_run_fails_when_one_of_its_processes_dies(make_run_environ):
    """Not exit status 0, as if the operator had stopped it: a script or CI must see it fail."""
    import signal

    from scripts import run
    from scripts.embedded_redis import free_port

    make_run_environ.setattr(run, "prepare_database", lambda: None)
    make_run_environ.setattr(run, "procfile", lambda: [("web", "sleep 30"), ("worker", "exit 3")])
    make_run_environ.setattr(signal, "signal", lambda *args: None)
    make_run_environ.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # no embedded Redis
    make_run_environ.setenv("PORT", str(free_port()))

    assert run.main() != 0


@pytest.mark.parametrize("redis_url", [None, "", "redis://redis.internal:6380/2"])
def test_the_procfile_worker_and_cron_use_the_redis_the_web_app_uses(redis_url):
    """REDIS_URL left empty (as in .env.example, which Procfile runners load) is unset, as the
    web app reads it: rq given --url "" stopped with "Redis URL must specify one of the
    following schemes"."""
    import subprocess

    import settings
    from scripts.run import procfile

    environ = {"PATH": os.environ["PATH"]}
    if redis_url is not None:
        environ["REDIS_URL"] = redis_url
    for name, command in procfile():
        if name == "web":
            continue
        # The arguments the process gets, as the shell running the Procfile line passes them.
        argv = subprocess.run(
            ["sh", "-c", f'set -- {command}; printf "%s\\n" "$@"'],
            env=environ,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        given = argv[argv.index("--url") + 1]
        assert given == (redis_url or settings.REDIS_URL), name


def test_the_access_log_keeps_what_staff_search_the_cases_for_out():
    """A payer's phone number or name typed into the case search is in the URL of the page."""
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from accesslog import AccessLogger

    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/admin/cases?q=617-555-0134&filter=overdue",
        "PATH_INFO": "/admin/cases",
        "QUERY_STRING": "q=617-555-0134&filter=overdue",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": "https://pay.example.gov/admin/cases?filter=&q=Ana+Rivera&page=2",
    }
    response = SimpleNamespace(status="200 OK", headers=[], sent=10)
    atoms = AccessLogger(Config()).atoms(response, [], environ, timedelta(milliseconds=3))
    assert "0134" not in repr(atoms) and "Rivera" not in repr(atoms)
    assert atoms["r"] == "GET /admin/cases?q=[redacted]&filter=overdue HTTP/1.1"
    assert atoms["q"] == "q=[redacted]&filter=overdue"
    assert atoms["f"] == "https://pay.example.gov/admin/cases?filter=&q=[redacted]&page=2"


def test_make_run_with_a_wrong_setting_names_it_without_a_traceback(make_run_environ, capsys):
    from scripts import run
    from scripts.embedded_redis import free_port

    make_run_environ.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # no embedded Redis
    make_run_environ.setenv("PORT", str(free_port()))
    make_run_environ.setenv("QUIET_HOURS", "8-21")

    assert run.main() == 1

    output = capsys.readouterr().out
    assert "PayText cannot start" in output
    assert "QUIET_HOURS='8-21' is not allowed" in output and "08:00-21:00" in output
    assert "Traceback" not in output
