"""Acceptance: real `rq worker` and `rq cron` processes, real Redis, the Twilio SDK to a fake."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from jobs import reminders
from jobs.reminders import dispatch_due, plan_all
from models import ConversationTurn, Reminder, ReminderKind, ReminderStatus, utcnow
from tests.factories import make_case, make_enrollment
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio
from tests.test_reminders import PHONE, local_today, zone_at

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RQ = str(ROOT / ".venv" / "bin" / "rq")
WORKER = [RQ, "worker", "--worker-class", "jobs.context.AppWorker", "--with-scheduler"]
QUEUES = ["payments", "sms", "default"]


@pytest.fixture
def fake_twilio():
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def processes(tmp_path):
    """Start processes with their output in tmp_path; stop whichever are still running."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("ab")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def environment(config: dict, fake: FakeTwilio, **extra) -> dict[str, str]:
    """What a worker needs to share the test's database and Redis and send to the fake."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": config["DATABASE_URL"],
        "REDIS_URL": config["REDIS_URL"],
        "SECRET_KEY": "test-secret-key",
        "FLASK_DEBUG": "1",
        "LOG_LEVEL": "WARNING",
        "AGENCY_NAME": config["AGENCY_NAME"],
        "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": fake.url,
        "PUBLIC_BASE_URL": "http://paytext.test",
    }
    env.update({name: str(value) for name, value in extra.items()})
    return env


def wait_for(condition, *, timeout: float, what: str, processes=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            assert process.poll() is None, f"{process.args[:2]} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_reminder_due_in_a_few_seconds_goes_out_once_through_worker_and_cron(
    config, app, session, fake_twilio, processes
):
    with app.app_context():
        zone = zone_at(13)
        case = make_case(
            session, case_number="CS-007731", timezone=zone, next_due_date=local_today(zone)
        )
        make_enrollment(session, case, PHONE)
        plan_all()
    today = session.exec(select(Reminder).where(Reminder.kind == ReminderKind.DUE_TODAY)).one()
    today.send_at = utcnow() + timedelta(seconds=3)
    session.add(today)
    session.commit()

    env = environment(config, fake_twilio, REMINDER_DISPATCH_SECONDS=1)
    worker = processes([*WORKER, "--url", config["REDIS_URL"], *QUEUES], env, "worker")
    cron = processes([RQ, "cron", "--url", config["REDIS_URL"], "jobs/cron.py"], env, "cron")
    wait_for(
        lambda: fake_twilio.messages,
        timeout=60,
        what="the reminder to reach Twilio",
        processes=[worker, cron],
    )
    time.sleep(4)  # four more dispatches by the cron: nothing more may go out

    (message,) = fake_twilio.messages
    when = local_today(zone)
    assert message["to"] == PHONE
    assert message["body"] == (
        "Demo County Child Support: Your payment of $250.00 for case ending 7731 is due today, "
        f"{when.strftime('%b')} {when.day}. Reply PAY to add a card and pay by text. "
        "Reply STOP to opt out."
    )
    session.expire_all()
    sent = session.get(Reminder, today.id)
    assert sent.status == ReminderStatus.SENT
    turn = session.exec(
        select(ConversationTurn).where(ConversationTurn.reminder_id == sent.id)
    ).one()
    assert turn.provider_message_id == message["sid"]


def test_killing_a_worker_mid_batch_loses_no_reminder_and_sends_none_twice(
    config, session, fake_twilio, processes
):
    config["RQ_ASYNC"] = True
    from app import create_app

    app = create_app(config)
    count = 300
    zone = zone_at(13)
    with app.app_context():
        for n in range(count):
            case = make_case(session, timezone=zone, next_due_date=local_today(zone))
            make_enrollment(session, case, f"+1617555{n:04d}")
        plan_all()
        assert dispatch_due().enqueued == count

    env = environment(config, fake_twilio, SMS_RATE_PER_SECOND=100)
    command = [*WORKER, "--url", config["REDIS_URL"], *QUEUES]
    first = processes(command, env, "worker-1")
    wait_for(
        lambda: len(fake_twilio.messages) >= 80,
        timeout=60,
        what="the first texts",
        processes=[first],
    )
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = len(fake_twilio.messages)
    assert killed_at < count, "the worker finished before it could be killed"

    second = processes(command, env, "worker-2")
    queue = app.extensions["queues"]["sms"]
    wait_for(lambda: queue.count == 0, timeout=60, what="the queue to drain", processes=[second])

    def settled() -> bool:
        session.expire_all()
        waiting = session.exec(
            select(Reminder).where(
                Reminder.kind == ReminderKind.DUE_TODAY,
                Reminder.status.in_([ReminderStatus.QUEUED, ReminderStatus.SENDING]),
            )
        ).all()
        return not waiting or all(row.status == ReminderStatus.SENDING for row in waiting)

    wait_for(settled, timeout=60, what="the surviving jobs", processes=[second])
    # The killed batch's rows are still `sending`; once the timeout has passed, dispatch takes
    # them back and the new job skips every phone already texted.
    with app.app_context():
        later = utcnow() + reminders.SENDING_TIMEOUT + timedelta(minutes=1)
        recovered = dispatch_due(now=later)
    assert recovered.recovered > 0

    def done() -> bool:
        session.expire_all()
        rows = session.exec(select(Reminder).where(Reminder.kind == ReminderKind.DUE_TODAY)).all()
        return all(row.status in (ReminderStatus.SENT, ReminderStatus.FAILED) for row in rows)

    wait_for(done, timeout=60, what="every reminder to finish", processes=[second])

    per_phone = Counter(message["to"] for message in fake_twilio.messages)
    assert max(per_phone.values()) == 1, "a phone got a reminder twice"
    rows = session.exec(select(Reminder).where(Reminder.kind == ReminderKind.DUE_TODAY)).all()
    phones = {
        turn.reminder_id: turn.phone
        for turn in session.exec(
            select(ConversationTurn).where(ConversationTurn.reminder_id.is_not(None))
        )
    }
    sent = [row for row in rows if row.status == ReminderStatus.SENT]
    in_doubt = [row for row in rows if row.status == ReminderStatus.FAILED]
    # Only the texts in flight when the worker died can be in doubt; none is sent again.
    assert len(in_doubt) <= reminders.SEND_LANES
    assert {row.reason for row in in_doubt} <= {"outcome_unknown"}
    assert len(sent) + len(in_doubt) == count
    assert all(per_phone[phones[row.id]] == 1 for row in sent)
    assert len(fake_twilio.messages) >= len(sent)
    print(f"killed after {killed_at} texts; in doubt: {len(in_doubt)}")
