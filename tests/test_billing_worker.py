"""Billing against real processes: a killed RQ worker, a Redis that lost its queue, and 50
simultaneous YES replies to gunicorn. Stripe is the local fake, driven by the real SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sqlmodel import select

from billing import service
from billing.jobs import CRASH_AFTER_CHARGE_ENV
from models import Case, Payment, PaymentStatus
from scripts.embedded_redis import free_port
from tests.billing_helpers import (
    WEBHOOK_SECRET,
    add_card,
    confirmed_payment,
    payment,
    reload,
    stripe_config,
    texts,
)
from tests.factories import make_case, make_enrollment
from tests.fakes.stripe_api import FakeStripe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PHONE = "+16175550134"


@pytest.fixture
def fake():
    with FakeStripe() as running:
        yield running


@pytest.fixture
def config(config, fake):
    config["RQ_ASYNC"] = True  # jobs go to Redis, as in production
    return stripe_config(config, fake)


def service_environment(app, **extra: str) -> dict[str, str]:
    """The settings the web and worker processes read, the same as the test app's."""
    config = app.config
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "TWILIO_"))
    }
    environment.update(
        DATABASE_URL=config["DATABASE_URL"],
        REDIS_URL=config["REDIS_URL"],
        SECRET_KEY=config["SECRET_KEY"],
        PUBLIC_BASE_URL=config["PUBLIC_BASE_URL"],
        AGENCY_NAME=config["AGENCY_NAME"],
        STRIPE_SECRET_KEY=config["STRIPE_SECRET_KEY"],
        STRIPE_API_BASE_URL=config["STRIPE_API_BASE_URL"],
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_PUBLISHABLE_KEY="pk_test_fake",
        FLASK_DEBUG="1",  # a development process: the fake's keys are not production keys
        LOG_LEVEL="INFO",
        **extra,
    )
    return environment


def run_worker(app, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    """`rq worker --burst` on the payments queue, in its own process, as the Procfile runs it."""
    log = tmp_path / f"worker-{time.monotonic_ns()}.log"
    with log.open("w") as output:
        finished = subprocess.run(
            [
                str(BIN / "rq"),
                "worker",
                "--url",
                app.config["REDIS_URL"],
                "--worker-class",
                "jobs.context.AppWorker",
                "--burst",
                "payments",
            ],
            cwd=ROOT,
            env=service_environment(app, **extra),
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    finished.log = log.read_text()  # type: ignore[attr-defined]
    return finished


def test_a_worker_killed_between_the_stripe_call_and_the_commit_charges_once_after_restart(
    app, session, fake, runner, tmp_path
):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case)
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)

    crashed = run_worker(app, tmp_path, **{CRASH_AFTER_CHARGE_ENV: str(created.id)})

    assert crashed.returncode == 70, crashed.log
    assert "dying after the processor answered" in crashed.log
    assert fake.payment_intents_created == 1
    assert payment(session, created.id).status == PaymentStatus.PROCESSING
    assert texts(session, payment_id=created.id) == []

    resumed = runner.invoke(args=["payments", "resume", "--idle-minutes", "0"])
    assert "Resumed 1 payment(s)." in resumed.output
    restarted = run_worker(app, tmp_path)

    assert restarted.returncode == 0, restarted.log
    paid = payment(session, created.id)
    assert (paid.status, paid.attempts) == (PaymentStatus.SUCCEEDED, 2)
    assert fake.payment_intents_created == 1 and fake.charges_created == 1
    assert len(texts(session, intent="receipt", payment_id=created.id)) == 1
    assert reload(session, Case, case.id).balance_cents == 75_000


def test_a_payment_lost_with_redis_is_charged_once_after_a_restart(
    app, session, fake, runner, tmp_path
):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case)
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
    app.extensions["redis"].flushdb()  # Redis restarted without its data: the job is gone

    assert runner.invoke(args=["payments", "resume", "--idle-minutes", "10"]).output == (
        "Resumed 0 payment(s).\n"  # too recent: its job may still be on its way
    )
    resumed = runner.invoke(args=["payments", "resume", "--idle-minutes", "0"])
    assert "Resumed 1 payment(s)." in resumed.output
    assert run_worker(app, tmp_path).returncode == 0
    assert runner.invoke(args=["payments", "resume", "--idle-minutes", "0"]).output == (
        "Resumed 0 payment(s).\n"
    )

    assert payment(session, created.id).status == PaymentStatus.SUCCEEDED
    assert fake.payment_intents_created == 1
    assert len(texts(session, intent="receipt")) == 1


@contextmanager
def gunicorn(app, tmp_path: Path):
    """The web process as the Procfile runs it (2 workers), on a free port."""
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{port}",
            "app:create_app()",
        ],
        cwd=ROOT,
        env=service_environment(app),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "gunicorn.log").read_text())
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def text(base: str, body: str, sid: str) -> requests.Response:
    form = {"MessageSid": sid, "From": PHONE, "To": "+18005550100", "Body": body, "NumMedia": "0"}
    return requests.post(f"{base}/sms/inbound", data=form, timeout=60)


def test_fifty_simultaneous_yes_replies_make_one_payment_intent_and_one_payment(
    app, session, fake, tmp_path
):
    case = make_case(session, amount_due_cents=25_000)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case)
    start = threading.Barrier(50)

    def yes(index: int) -> requests.Response:
        start.wait()
        return text(base, "YES", f"SM{index:032d}")

    with gunicorn(app, tmp_path) as base:
        quote = text(base, "PAY", "SM" + "f" * 32)
        assert "Reply YES" in quote.text
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(yes, range(50)))
        worker = run_worker(app, tmp_path)

    assert [answer.status_code for answer in answers] == [200] * 50
    assert sum("being processed" in answer.text for answer in answers) == 1
    assert worker.returncode == 0, worker.log
    assert fake.payment_intents_created == 1 and fake.charges_created == 1
    session.expire_all()
    [paid] = session.exec(select(Payment)).all()
    assert (paid.status, paid.card_id, paid.amount_cents) == (
        PaymentStatus.SUCCEEDED,
        card.id,
        25_000,
    )
    assert len(texts(session, intent="receipt")) == 1
    assert reload(session, Case, case.id).balance_cents == 75_000
