"""Reminders end to end on a real database and Redis: plan, dispatch, send, skip, defer."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from flask import current_app
from rq import SimpleWorker
from sqlmodel import Session, select

import db
from billing.cycles import previous_due_date
from billing.jobs import expire_approvals
from bot.sms import TwilioGateway
from jobs import reminders
from jobs.reminders import cancel_pending, dispatch_due, plan_all, plan_case
from models import (
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    CardOnFile,
    ConversationTurn,
    Enrollment,
    EnrollmentStatus,
    Payment,
    PaymentStatus,
    Reminder,
    ReminderKind,
    ReminderStatus,
    utcnow,
)
from tests.billing_helpers import (
    AUTHENTICATION,
    after_approval_window,
    csrf_field,
    path_of,
    received,
)
from tests.billing_helpers import add_card as add_billing_card
from tests.billing_helpers import texts as billing_texts
from tests.conftest import free_port
from tests.factories import make_case, make_enrollment
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilio
from tests.sms_helpers import inbound_params, post_signed, replies

PHONE = "+16175550134"  # Massachusetts: the plain 08:00-21:00 window
FLORIDA_PHONE = "+13055550100"


def zone_at(hour: int) -> str:
    """An Etc/GMT zone whose clock reads `hour` o'clock right now."""
    offset = (hour - datetime.now(UTC).hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


def local_today(zone: str) -> date:
    return datetime.now(ZoneInfo(zone)).date()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


@pytest.fixture
def sms(ctx):
    """The console gateway's record of what was sent."""
    return ctx.extensions["sms"].sent


def rows(session, case_id: int) -> dict[ReminderKind, Reminder]:
    session.expire_all()
    found = session.exec(select(Reminder).where(Reminder.case_id == case_id)).all()
    return {row.kind: row for row in found}


def turns(session, **where) -> list[ConversationTurn]:
    session.expire_all()
    query = select(ConversationTurn).order_by(ConversationTurn.id)
    for name, value in where.items():
        query = query.where(getattr(ConversationTurn, name) == value)
    return list(session.exec(query).all())


def due_today_case(session, *, hour: int = 13, phone: str = PHONE, **fields):
    """A case due today in a zone where it is `hour` o'clock now, enrolled, with its plan."""
    zone = zone_at(hour)
    values = {"timezone": zone, "next_due_date": local_today(zone), **fields}
    case = make_case(session, **values)
    make_enrollment(session, case, phone)
    plan_case(session=session, case_id=case.id)
    session.commit()
    return case


def add_card(session, case, last4: str = "4242") -> None:
    session.add(
        CardOnFile(
            case_id=case.id,
            processor="sandbox",
            customer_id="cus_test",
            payment_method_id=f"pm_{case.id}",
            brand="Visa",
            last4=last4,
            exp_month=12,
            exp_year=2030,
        )
    )
    session.commit()


def pay(
    session, case, amount: int, *, at: datetime, status: PaymentStatus = PaymentStatus.SUCCEEDED
) -> None:
    """A payment made at `at`; one that succeeded is on the balance already, as billing puts it."""
    session.add(
        Payment(
            case_id=case.id,
            amount_cents=amount,
            status=status,
            idempotency_key=f"test-{case.id}-{at.timestamp()}",
            created_at=at,
            succeeded_at=at if status == PaymentStatus.SUCCEEDED else None,
        )
    )
    session.commit()


# --- planning ----------------------------------------------------------------------------------


def test_planning_puts_the_three_due_reminders_in_the_database_at_ten_local(ctx, session):
    case = make_case(session, timezone="America/Chicago", next_due_date=date(2030, 6, 14))
    make_enrollment(session, case)
    plan_case(session=session, case_id=case.id, now=datetime(2030, 6, 1, tzinfo=UTC))
    session.commit()
    found = rows(session, case.id)
    chicago = ZoneInfo("America/Chicago")
    assert {kind: row.send_at.astimezone(chicago) for kind, row in found.items()} == {
        ReminderKind.DUE_SOON: datetime(2030, 6, 11, 10, tzinfo=chicago),
        ReminderKind.DUE_TODAY: datetime(2030, 6, 14, 10, tzinfo=chicago),
        ReminderKind.OVERDUE: datetime(2030, 6, 15, 10, tzinfo=chicago),
    }
    assert {row.cycle for row in found.values()} == {"2030-06-14"}
    assert {row.status for row in found.values()} == {ReminderStatus.SCHEDULED}


def test_planning_again_changes_nothing(ctx, session):
    case = make_case(session, next_due_date=date(2030, 6, 14))
    make_enrollment(session, case)
    now = datetime(2030, 6, 1, tzinfo=UTC)
    plan_case(session=session, case_id=case.id, now=now)
    session.commit()
    before = {
        kind: (row.id, row.send_at, row.updated_at) for kind, row in rows(session, case.id).items()
    }
    plan_case(session=session, case_id=case.id, now=now + timedelta(hours=1))
    session.commit()
    after = {
        kind: (row.id, row.send_at, row.updated_at) for kind, row in rows(session, case.id).items()
    }
    assert after == before


def test_a_moved_due_date_moves_the_unsent_rows_instead_of_adding_new_ones(ctx, session):
    case = make_case(session, timezone="America/New_York", next_due_date=date(2030, 6, 14))
    make_enrollment(session, case)
    now = datetime(2030, 6, 12, 12, tzinfo=UTC)
    plan_case(session=session, case_id=case.id, now=now)
    first = rows(session, case.id)
    first[ReminderKind.DUE_SOON].status = ReminderStatus.SENT  # went out on Jun 11
    case.next_due_date = date(2030, 6, 20)
    session.add_all([first[ReminderKind.DUE_SOON], case])
    session.commit()

    plan_case(session=session, case_id=case.id, now=now)
    session.commit()
    session.expire_all()
    everything = session.exec(select(Reminder).where(Reminder.case_id == case.id)).all()
    assert len(everything) == 4  # the sent due-soon row stays; one new due-soon for Jun 20
    moved = {row.kind: row for row in everything if row.cycle == "2030-06-20"}
    assert moved[ReminderKind.DUE_TODAY].id == first[ReminderKind.DUE_TODAY].id
    assert moved[ReminderKind.OVERDUE].id == first[ReminderKind.OVERDUE].id
    ny = ZoneInfo("America/New_York")
    assert moved[ReminderKind.DUE_TODAY].send_at == datetime(2030, 6, 20, 10, tzinfo=ny)
    assert moved[ReminderKind.DUE_SOON].send_at == datetime(2030, 6, 17, 10, tzinfo=ny)


def test_an_appointment_reminder_follows_its_appointment_and_goes_when_it_is_cancelled(
    ctx, session
):
    case = make_case(session, timezone="America/New_York", next_due_date=None)
    make_enrollment(session, case)
    ny = ZoneInfo("America/New_York")
    appointment = Appointment(
        case_id=case.id,
        starts_at=datetime(2030, 6, 20, 14, tzinfo=ny),
        kind=AppointmentKind.COURT_HEARING,
        location="Family Court, Room 4",
    )
    session.add(appointment)
    session.commit()
    now = datetime(2030, 6, 1, tzinfo=UTC)
    plan_case(session=session, case_id=case.id, now=now)
    session.commit()
    planned = rows(session, case.id)[ReminderKind.APPOINTMENT]
    assert (planned.cycle, planned.send_at) == (
        f"appt:{appointment.id}",
        datetime(2030, 6, 19, 14, tzinfo=ny),
    )

    appointment.starts_at = datetime(2030, 6, 25, 9, tzinfo=ny)
    session.add(appointment)
    session.commit()
    plan_case(session=session, case_id=case.id, now=now)
    session.commit()
    moved = rows(session, case.id)[ReminderKind.APPOINTMENT]
    assert (moved.id, moved.send_at) == (planned.id, datetime(2030, 6, 24, 9, tzinfo=ny))

    appointment.status = AppointmentStatus.CANCELED
    session.add(appointment)
    session.commit()
    plan_case(session=session, case_id=case.id, now=now)
    session.commit()
    gone = rows(session, case.id)[ReminderKind.APPOINTMENT]
    assert (gone.status, gone.reason) == (ReminderStatus.CANCELED, "appointment_canceled")


def test_reminders_whose_day_has_passed_are_recorded_as_too_late(ctx, session):
    case = make_case(session, timezone="America/New_York", next_due_date=date(2030, 6, 14))
    make_enrollment(session, case)
    # Enrolled at noon on the due date: "due Jun 14" can no longer go out before Jun 14.
    noon = datetime(2030, 6, 14, 16, tzinfo=UTC)
    plan_case(session=session, case_id=case.id, now=noon)
    session.commit()
    found = rows(session, case.id)
    assert (found[ReminderKind.DUE_SOON].status, found[ReminderKind.DUE_SOON].reason) == (
        ReminderStatus.SKIPPED,
        "too_late",
    )
    assert found[ReminderKind.DUE_TODAY].status == ReminderStatus.SCHEDULED
    assert found[ReminderKind.DUE_TODAY].send_at == noon  # its 10:00 passed: as soon as allowed


def test_a_send_time_after_a_florida_numbers_window_moves_inside_it(config, session):
    config["REMINDER_SEND_TIME"] = "20:30"
    from app import create_app

    app = create_app(config)
    with app.app_context():
        florida = make_case(session, timezone="America/New_York", next_due_date=date(2030, 6, 14))
        make_enrollment(session, florida, FLORIDA_PHONE)
        boston = make_case(session, timezone="America/New_York", next_due_date=date(2030, 6, 14))
        make_enrollment(session, boston, PHONE)
        for case in (florida, boston):
            plan_case(session=session, case_id=case.id, now=datetime(2030, 6, 1, tzinfo=UTC))
        session.commit()
    ny = ZoneInfo("America/New_York")

    def local_time(case) -> time:
        return rows(session, case.id)[ReminderKind.DUE_TODAY].send_at.astimezone(ny).time()

    assert local_time(florida) == time(19)  # an hour before Florida's 20:00 close
    assert local_time(boston) == time(20, 30)


def test_plan_all_plans_enrolled_cases_and_cancels_those_left_without_a_phone(ctx, session):
    enrolled = make_case(session, next_due_date=date(2030, 6, 14))
    make_enrollment(session, enrolled)
    never = make_case(session, next_due_date=date(2030, 6, 14))
    make_enrollment(session, never, "+16175550199", status=EnrollmentStatus.PENDING)
    left = make_case(session, next_due_date=date(2030, 6, 14))
    leaving = make_enrollment(session, left, "+16175550177")
    now = datetime(2030, 6, 1, tzinfo=UTC)
    summary = plan_all(now=now)
    assert (summary.cases, summary.planned) == (2, 6)
    assert rows(session, never.id) == {}

    leaving.status = EnrollmentStatus.OPTED_OUT
    session.add(leaving)
    session.commit()
    summary = plan_all(now=now)
    assert summary.canceled == {"not_enrolled": 3}
    assert {row.status for row in rows(session, left.id).values()} == {ReminderStatus.CANCELED}
    assert summary.unchanged == 3


def test_a_case_with_an_impossible_date_is_skipped_and_the_others_are_planned(ctx, session, caplog):
    no_end = make_case(session, next_due_date=date(9999, 12, 31))
    make_enrollment(session, no_end, "+16175550111")
    far = make_case(session, next_due_date=None)
    make_enrollment(session, far, "+16175550122")
    session.add(
        Appointment(
            case_id=far.id,
            starts_at=datetime(9999, 12, 31, 12, tzinfo=UTC),
            kind=AppointmentKind.COURT_HEARING,
        )
    )
    session.commit()
    fine = make_case(session, next_due_date=date(2030, 6, 14))
    make_enrollment(session, fine)

    summary = plan_all(now=datetime(2030, 6, 1, tzinfo=UTC))
    assert (summary.planned, summary.failed) == (3, 2)
    assert len(rows(session, fine.id)) == 3
    assert rows(session, no_end.id) == {} and rows(session, far.id) == {}
    assert f"case {no_end.id}" in caplog.text and f"case {far.id}" in caplog.text
    plan_case(session=session, case_id=no_end.id)  # staff pages re-plan one case: no error


# --- sending -----------------------------------------------------------------------------------


def test_a_due_reminder_goes_out_once_with_amount_date_card_and_how_to_stop(ctx, session, sms):
    case = due_today_case(session, case_number="CS-004821")
    add_card(session, case, "4242")
    summary = dispatch_due()
    assert (summary.enqueued, summary.sent) == (1, 1)
    assert [message.to for message in sms] == [PHONE]
    today = local_today(case.timezone)
    assert sms[0].body == (
        "Demo County Child Support: Your payment of $250.00 for case ending 4821 is due today, "
        f"{today.strftime('%b')} {today.day}. Reply PAY to pay $250.00 with your card ending "
        "4242. Reply STOP to opt out."
    )
    sent = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (sent.status, sent.sent_at is not None) == (ReminderStatus.SENT, True)
    (turn,) = turns(session, reminder_id=sent.id)
    assert (turn.phone, turn.body, turn.intent) == (PHONE, sms[0].body, "reminder_due_today")

    assert dispatch_due().enqueued == 0
    assert len(sms) == 1


def test_the_reminder_speaks_the_payers_language_and_says_how_to_add_a_card(ctx, session, sms):
    due_today_case(session, language="es")
    dispatch_due()
    assert "Responda PAGAR para agregar una tarjeta" in sms[0].body
    assert "vence hoy" in sms[0].body


def test_every_active_phone_of_the_case_gets_its_own_logged_text(ctx, session, sms):
    case = due_today_case(session)
    make_enrollment(session, case, "+16175550188", language="es")
    make_enrollment(session, case, "+16175550177", status=EnrollmentStatus.PENDING)
    dispatch_due()
    assert sorted(message.to for message in sms) == [PHONE, "+16175550188"]
    reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert {turn.phone for turn in turns(session, reminder_id=reminder.id)} == {
        PHONE,
        "+16175550188",
    }


def test_a_changed_amount_is_what_the_reminder_says(ctx, session, sms):
    case = due_today_case(session)
    case.amount_due_cents = 31_250
    session.add(case)
    session.commit()
    dispatch_due()
    assert "Your payment of $312.50" in sms[0].body


def test_a_due_date_moved_after_planning_is_replanned_not_sent_with_the_old_date(ctx, session, sms):
    case = due_today_case(session)
    case.next_due_date = case.next_due_date + timedelta(days=10)
    session.add(case)
    session.commit()
    summary = dispatch_due()
    assert summary.skipped == {"rescheduled": 1} and summary.sent == 0
    assert list(sms) == []
    moved = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (moved.cycle, moved.status) == (case.next_due_date.isoformat(), ReminderStatus.SCHEDULED)
    assert moved.send_at > utcnow() + timedelta(days=9)


def test_paid_this_cycle_skips_the_overdue_reminder_with_reason_paid(ctx, session, sms):
    zone = zone_at(13)
    yesterday = local_today(zone) - timedelta(days=1)
    case = make_case(session, timezone=zone, next_due_date=yesterday, balance_cents=75_000)
    make_enrollment(session, case)
    pay(session, case, 25_000, at=utcnow() - timedelta(days=1))
    plan_case(session=session, case_id=case.id)
    session.commit()
    summary = dispatch_due()
    overdue = rows(session, case.id)[ReminderKind.OVERDUE]
    assert (overdue.status, overdue.reason) == (ReminderStatus.SKIPPED, "paid")
    assert summary.skipped["paid"] == 1
    assert list(sms) == []


def test_a_payment_for_the_previous_cycle_does_not_count_as_paid(ctx, session, sms):
    case = due_today_case(session)
    pay(session, case, 25_000, at=utcnow() - timedelta(days=40))
    dispatch_due()
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT


def texting_for_months(session, **fields):
    """A case due today (13:00 local) whose payer has paid by text for months."""
    zone = zone_at(13)
    case = make_case(session, timezone=zone, next_due_date=local_today(zone), **fields)
    make_enrollment(session, case, PHONE, confirmed_at=utcnow() - timedelta(days=120))
    plan_case(session=session, case_id=case.id)
    session.commit()
    return case


def local_noon(day: date, case) -> datetime:
    return datetime.combine(day, time(12), tzinfo=ZoneInfo(case.timezone))


def test_last_months_installment_paid_late_does_not_silence_this_months_reminder(ctx, session, sms):
    case = texting_for_months(session, balance_cents=75_000)
    last_due = previous_due_date(case.next_due_date)
    pay(session, case, 25_000, at=local_noon(last_due + timedelta(days=2), case))
    dispatch_due()
    reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (reminder.status, reminder.reason) == (ReminderStatus.SENT, None)
    assert [message.to for message in sms] == [PHONE]


def test_last_months_installment_paid_on_time_leaves_this_months_payment_to_this_month(
    ctx, session, sms
):
    case = texting_for_months(session, balance_cents=50_000)
    last_due = previous_due_date(case.next_due_date)
    pay(session, case, 25_000, at=local_noon(last_due - timedelta(days=1), case))
    pay(session, case, 25_000, at=utcnow() - timedelta(hours=2))
    dispatch_due()
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].reason == "paid"
    assert list(sms) == []


def test_last_months_installment_paid_on_its_month_end_due_date_leaves_this_month_unpaid(
    queued_app, session
):
    # Due on the last day of each month: the Oct 31 installment was paid on Oct 31.
    ny = ZoneInfo("America/New_York")
    case = make_case(
        session,
        case_number="CS-000501",
        timezone="America/New_York",
        next_due_date=date(2026, 11, 30),
        balance_cents=75_000,
    )
    make_enrollment(session, case, PHONE, confirmed_at=datetime(2026, 10, 15, tzinfo=UTC))
    add_card(session, case)
    pay(session, case, 25_000, at=datetime(2026, 10, 31, 12, tzinfo=ny))
    noon = datetime(2026, 12, 1, 12, tzinfo=ny)
    plan_case(session=session, case_id=case.id, now=noon)
    session.commit()
    one = datetime(2026, 12, 1, 13, tzinfo=ny)
    assert dispatch_due(now=one).enqueued == 1
    (job,) = queued_app.extensions["queues"]["sms"].get_jobs()
    summary = reminders.send_reminders(claims=job.args[0], clock=lambda: one)
    assert (summary.sent, dict(summary.skipped)) == (1, {})
    overdue = rows(session, case.id)[ReminderKind.OVERDUE]
    assert (overdue.status, overdue.reason) == (ReminderStatus.SENT, None)
    (reminder,) = queued_app.extensions["sms"].sent
    assert "$250.00" in reminder.body and "Nov 30" in reminder.body

    client = queued_app.test_client()
    (balance,) = replies(post_signed(client, "/sms/inbound", inbound_params("BAL", PHONE), None))
    assert "covered" not in balance and "$250.00" in balance, balance
    (quote,) = replies(post_signed(client, "/sms/inbound", inbound_params("PAY", PHONE), None))
    assert "$250.00" in quote and "covered" not in quote, quote


def test_a_partial_payment_does_not_count_as_paid_and_the_reminder_asks_for_the_rest(
    ctx, session, sms
):
    case = due_today_case(session, balance_cents=90_000)
    pay(session, case, 10_000, at=utcnow() - timedelta(hours=2))
    dispatch_due()
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT
    (reminder,) = sms
    assert "Your payment of $150.00" in reminder.body


@pytest.mark.parametrize(
    "status", [PaymentStatus.PENDING, PaymentStatus.PROCESSING, PaymentStatus.REQUIRES_ACTION]
)
def test_a_cycle_only_a_payment_in_flight_covers_holds_the_reminder_an_hour_not_skips_it(
    ctx, session, sms, status
):
    # Not on the balance yet: billing takes it off when it succeeds. BAL calls it covered, but
    # the reminder is not closed on the strength of a payment that may still fail.
    case = due_today_case(session, balance_cents=100_000)
    pay(session, case, 25_000, at=utcnow() - timedelta(hours=2), status=status)
    before = utcnow()
    summary = dispatch_due()
    assert (summary.sent, summary.deferred, dict(summary.skipped)) == (0, 1, {})
    held = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (held.status, held.reason) == (ReminderStatus.DEFERRED, "payment_in_flight")
    recheck = before + reminders.IN_FLIGHT_RECHECK
    assert recheck <= held.send_at.replace(tzinfo=UTC) <= recheck + timedelta(minutes=1)
    assert list(sms) == []
    # Still in flight at the next look: held again.
    assert dispatch_due(now=held.send_at).deferred == 1
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].reason == "payment_in_flight"
    assert list(sms) == []


@pytest.mark.parametrize(
    ("outcome", "sent"), [(PaymentStatus.FAILED, 1), (PaymentStatus.SUCCEEDED, 0)]
)
def test_a_held_reminder_is_judged_at_the_next_dispatch_once_the_payment_settles(
    ctx, session, sms, outcome, sent
):
    case = due_today_case(session, balance_cents=100_000)
    pay(session, case, 25_000, at=utcnow() - timedelta(hours=2), status=PaymentStatus.PENDING)
    assert dispatch_due().deferred == 1
    held = rows(session, case.id)[ReminderKind.DUE_TODAY]
    claims = held.attempts
    # Still in flight a minute later: not looked at (each look is a claim, and claims are few).
    assert dispatch_due(now=utcnow() + timedelta(minutes=1)).due == 0
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].attempts == claims
    payment = session.exec(select(Payment).where(Payment.case_id == case.id)).one()
    payment.status = outcome
    if outcome == PaymentStatus.SUCCEEDED:
        case = session.get(type(case), case.id)
        case.balance_cents -= 25_000
        session.add(case)
    session.add(payment)
    session.commit()
    # Settled: the next dispatch judges it, hours before the fallback look.
    summary = dispatch_due(now=utcnow() + timedelta(minutes=2))
    assert summary.sent == sent and summary.deferred == 0
    assert len(sms) == sent
    final = rows(session, case.id)[ReminderKind.DUE_TODAY]
    expected = (ReminderStatus.SENT, None) if sent else (ReminderStatus.SKIPPED, "paid")
    assert (final.status, final.reason) == expected


def test_a_payment_in_flight_for_part_of_the_installment_does_not_hold_the_reminder(
    ctx, session, sms
):
    case = due_today_case(session, balance_cents=100_000)
    pay(session, case, 10_000, at=utcnow() - timedelta(hours=2), status=PaymentStatus.PENDING)
    dispatch_due()
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT
    assert "Your payment of $150.00" in sms[0].body


def test_a_cycle_paid_and_with_a_payment_in_flight_too_is_skipped_as_paid(ctx, session, sms):
    case = due_today_case(session, balance_cents=75_000)
    pay(session, case, 25_000, at=utcnow() - timedelta(hours=3))
    pay(session, case, 5_000, at=utcnow() - timedelta(hours=2), status=PaymentStatus.PENDING)
    dispatch_due()
    reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (reminder.status, reminder.reason) == (ReminderStatus.SKIPPED, "paid")
    assert list(sms) == []


def overdue_while_awaiting_approval(app, session):
    """A case due yesterday whose payer texted PAY, YES: the bank wants the payer's approval.

    Its overdue reminder is held; returns the case, the payment and the approval text.
    """
    zone = zone_at(13)
    case = make_case(session, timezone=zone, next_due_date=local_today(zone) - timedelta(days=1))
    make_enrollment(session, case, PHONE)
    add_billing_card(app, session, case, AUTHENTICATION)
    plan_case(session=session, case_id=case.id)
    session.commit()
    client = app.test_client()
    for body in ("PAY", "YES"):
        replies(post_signed(client, "/sms/inbound", inbound_params(body, PHONE), None))
    held = session.exec(select(Payment)).one()
    assert held.status == PaymentStatus.REQUIRES_ACTION
    [asked] = billing_texts(session, intent="auth_required")
    summary = dispatch_due()
    assert (summary.deferred, dict(summary.skipped)) == (1, {})
    overdue = rows(session, case.id)[ReminderKind.OVERDUE]
    assert (overdue.status, overdue.reason) == (ReminderStatus.DEFERRED, "payment_in_flight")
    assert turns(session, intent="reminder_overdue") == []
    return case, held, asked


def test_a_reminder_held_for_a_payment_awaiting_approval_is_skipped_once_it_goes_through(
    ctx, session
):
    case, held, asked = overdue_while_awaiting_approval(ctx, session)
    client = ctx.test_client()
    path = path_of(received(ctx, asked).split("finish: ", 1)[1].split(" ", 1)[0])
    page = client.get(path)
    assert "went through" in client.post(path, data=csrf_field(page.text)).text
    session.expire_all()
    assert session.get(Payment, held.id).status == PaymentStatus.SUCCEEDED

    summary = dispatch_due(now=rows(session, case.id)[ReminderKind.OVERDUE].send_at)
    assert summary.skipped == {"paid": 1}
    overdue = rows(session, case.id)[ReminderKind.OVERDUE]
    assert (overdue.status, overdue.reason) == (ReminderStatus.SKIPPED, "paid")
    assert turns(session, intent="reminder_overdue") == []


def test_a_reminder_held_for_a_payment_awaiting_approval_goes_once_the_approval_lapses(
    ctx, session, monkeypatch
):
    case, held, _ = overdue_while_awaiting_approval(ctx, session)
    after_approval_window(monkeypatch)
    with ctx.app_context():
        assert expire_approvals() == 1
    session.expire_all()
    assert session.get(Payment, held.id).status == PaymentStatus.CANCELED

    summary = dispatch_due(now=rows(session, case.id)[ReminderKind.OVERDUE].send_at)
    assert (summary.sent, dict(summary.skipped)) == (1, {})
    overdue = rows(session, case.id)[ReminderKind.OVERDUE]
    assert (overdue.status, overdue.reason) == (ReminderStatus.SENT, None)
    [reminder] = turns(session, intent="reminder_overdue")
    assert reminder.phone == PHONE and "$250.00" in reminder.body
    assert dispatch_due(now=utcnow() + timedelta(hours=3)).enqueued == 0


def test_a_held_reminder_waits_for_the_window_and_a_stop_while_held_cancels_it(ctx, session, sms):
    zone = zone_at(20)  # an hour on is 21:00 and later: quiet hours
    case = make_case(session, timezone=zone, next_due_date=local_today(zone) - timedelta(days=1))
    make_enrollment(session, case, PHONE)
    other = make_case(session, timezone=zone, next_due_date=local_today(zone) - timedelta(days=1))
    make_enrollment(session, other, "+16175550122")
    for held in (case, other):
        pay(session, held, 25_000, at=utcnow(), status=PaymentStatus.REQUIRES_ACTION)
        plan_case(session=session, case_id=held.id)
    session.commit()
    assert dispatch_due().deferred == 2
    waiting = rows(session, case.id)[ReminderKind.OVERDUE]
    local = waiting.send_at.astimezone(ZoneInfo(zone))
    assert local.time() == time(8) and local.date() == local_today(zone) + timedelta(days=1)

    replies(post_signed(ctx.test_client(), "/sms/inbound", inbound_params("STOP", PHONE), None))
    for payment in session.exec(select(Payment)).all():  # the payments fail
        payment.status = PaymentStatus.FAILED
        session.add(payment)
    session.commit()
    sms.clear()
    assert dispatch_due(now=waiting.send_at).sent == 1
    assert [message.to for message in sms] == ["+16175550122"]
    stopped = rows(session, case.id)[ReminderKind.OVERDUE]
    assert stopped.status == ReminderStatus.CANCELED


def test_a_failed_payment_does_not_count_as_paid(ctx, session, sms):
    case = due_today_case(session)
    pay(session, case, 25_000, at=utcnow() - timedelta(hours=2), status=PaymentStatus.FAILED)
    dispatch_due()
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT
    assert "Your payment of $250.00" in sms[0].body


def test_a_closed_case_or_zero_balance_sends_nothing(ctx, session, sms):
    paid_off = due_today_case(session, balance_cents=0)
    closed = due_today_case(session, phone="+16175550111")
    closed.status = "closed"
    session.add(closed)
    session.commit()
    summary = dispatch_due()
    assert summary.skipped == {"paid": 1, "case_closed": 1}
    assert rows(session, paid_off.id)[ReminderKind.DUE_TODAY].reason == "paid"
    assert list(sms) == []


def test_an_appointment_reminder_says_what_when_and_where(ctx, session, sms):
    zone = zone_at(13)
    case = make_case(session, timezone=zone, next_due_date=None)
    make_enrollment(session, case)
    starts = utcnow().replace(second=0, microsecond=0) + timedelta(hours=3)
    session.add(
        Appointment(
            case_id=case.id,
            starts_at=starts,
            kind=AppointmentKind.VIRTUAL_COUNTER,
            video_link="https://meet.example/abc",
        )
    )
    session.commit()
    plan_case(session=session, case_id=case.id)
    session.commit()
    dispatch_due()
    (message,) = sms
    clock = starts.astimezone(ZoneInfo(zone))
    hour = clock.hour % 12 or 12
    assert f"{hour}:{clock.minute:02d} {'AM' if clock.hour < 12 else 'PM'}" in message.body
    assert "https://meet.example/abc" in message.body and "STOP" in message.body


@pytest.mark.parametrize("moved_by", [timedelta(hours=2), timedelta(hours=-1)])
def test_an_appointment_moved_after_its_reminder_went_is_reminded_again_with_the_new_time(
    ctx, session, sms, moved_by
):
    from admin.service import move_appointment

    zone = zone_at(13)
    case = make_case(session, timezone=zone, next_due_date=None)
    make_enrollment(session, case)
    starts = utcnow().replace(second=0, microsecond=0) + timedelta(hours=3)
    appointment = Appointment(
        case_id=case.id, starts_at=starts, kind=AppointmentKind.COURT_HEARING, location="Room 4"
    )
    session.add(appointment)
    session.commit()
    plan_case(session=session, case_id=case.id)
    session.commit()
    dispatch_due()
    assert len(sms) == 1  # the old time

    new_start = starts + moved_by
    moved = move_appointment(session=session, appointment_id=appointment.id, starts_at=new_start)
    session.commit()
    assert moved is False  # its reminder for the new time goes at once: one text, not two
    again = [
        row
        for row in session.exec(select(Reminder).where(Reminder.case_id == case.id)).all()
        if row.status == ReminderStatus.SCHEDULED
    ]
    assert [row.appointment_id for row in again] == [appointment.id]
    dispatch_due()
    assert len(sms) == 2
    clock = new_start.astimezone(ZoneInfo(zone))
    hour = clock.hour % 12 or 12
    assert f"{hour}:{clock.minute:02d} {'AM' if clock.hour < 12 else 'PM'}" in sms[1].body
    # Planning again changes nothing: the new time was reminded of once.
    plan_case(session=session, case_id=case.id)
    session.commit()
    assert dispatch_due(now=new_start - timedelta(minutes=1)).due == 0


def appointment_in(session, hours: float, *, language: str = "en", **fields):
    """A case in a daytime zone with an active phone and an appointment `hours` from now, its
    reminder planned; returns (case, enrollment, appointment, start)."""
    case = make_case(session, timezone=zone_at(13), next_due_date=None)
    enrollment = make_enrollment(session, case, language=language)
    starts = utcnow().replace(second=0, microsecond=0) + timedelta(hours=hours)
    appointment = Appointment(case_id=case.id, starts_at=starts, location="Room 4", **fields)
    session.add(appointment)
    session.commit()
    plan_case(session=session, case_id=case.id)
    session.commit()
    return case, enrollment, appointment, starts


@pytest.mark.parametrize(
    ("language", "words"), [("en", "You no longer have a court hearing on"), ("es", "Ya no tiene")]
)
def test_a_payer_reminded_of_an_appointment_is_texted_once_when_it_is_canceled(
    ctx, session, sms, language, words
):
    from admin.service import cancel_appointment

    case, _, appointment, starts = appointment_in(
        session, 3, language=language, kind=AppointmentKind.COURT_HEARING
    )
    dispatch_due()
    assert len(sms) == 1  # reminded: the payer plans to come

    assert cancel_appointment(session=session, appointment_id=appointment.id) is True
    session.commit()
    plan_case(session=session, case_id=case.id)  # the hourly planning leaves the notice be
    session.commit()
    dispatch_due()
    assert len(sms) == 2
    clock = starts.astimezone(ZoneInfo(case.timezone))
    hour = clock.hour % 12 or 12
    assert words in sms[1].body and f"{hour}:{clock.minute:02d}" in sms[1].body
    assert "STOP" in sms[1].body
    notice = rows(session, case.id)[ReminderKind.APPOINTMENT_CANCELED]
    assert notice.status == ReminderStatus.SENT
    # Once: planning and dispatching again send nothing more.
    plan_case(session=session, case_id=case.id)
    session.commit()
    dispatch_due()
    assert len(sms) == 2


def test_an_appointment_canceled_before_its_reminder_went_sends_nothing(ctx, session, sms):
    from admin.service import cancel_appointment

    case, _, appointment, starts = appointment_in(session, 72)
    assert cancel_appointment(session=session, appointment_id=appointment.id) is False
    session.commit()
    dispatch_due(now=starts - timedelta(hours=20))
    assert len(sms) == 0
    assert {row.kind for row in rows(session, case.id).values()} == {ReminderKind.APPOINTMENT}


def test_a_dispatch_ends_when_its_inline_jobs_put_a_row_back_as_due(ctx, session, sms, monkeypatch):
    # The dispatch runs ahead of the send job's clock: the job finds the reminder early and
    # plans it again, at a time this dispatch counts as due. The run ends; the next one sends.
    claims, take = [], reminders._claim

    def claim(*args):
        assert len(claims) < 5, "the dispatch keeps claiming the row it put back"
        claims.append(take(*args))
        return claims[-1]

    monkeypatch.setattr(reminders, "_claim", claim)
    case, _, _, starts = appointment_in(session, 72)
    summary = dispatch_due(now=starts - timedelta(hours=20))
    assert len(claims) == 1
    assert (summary.due, summary.enqueued, len(sms)) == (1, 1, 0)
    again = rows(session, case.id)[ReminderKind.APPOINTMENT]
    assert again.status == ReminderStatus.SCHEDULED
    assert utcnow() < again.send_at <= starts - timedelta(hours=20)


def test_a_cancellation_notice_is_not_sent_after_a_stop(ctx, session, sms):
    from admin.service import cancel_appointment

    case, enrollment, appointment, _ = appointment_in(session, 3)
    dispatch_due()
    assert cancel_appointment(session=session, appointment_id=appointment.id) is True
    session.commit()
    from bot.service import opt_out

    opt_out(session=session, phone=enrollment.phone, enrollments=[enrollment], now=utcnow())
    session.commit()
    dispatch_due()
    assert len(sms) == 1  # the reminder; no notice after the STOP
    notice = rows(session, case.id)[ReminderKind.APPOINTMENT_CANCELED]
    assert (notice.status, notice.reason) == (ReminderStatus.CANCELED, "opted_out")


def clock_text(at: datetime, zone: str) -> str:
    clock = at.astimezone(ZoneInfo(zone))
    return f"{clock.hour % 12 or 12}:{clock.minute:02d}"


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("en", "has a new time. You now have a court hearing on"),
        ("es", "Su cita tiene nueva hora. Ahora tiene una audiencia"),
    ],
)
def test_a_payer_reminded_of_an_appointment_is_texted_its_new_time_when_it_moves_days_later(
    ctx, session, sms, language, words
):
    from admin.service import move_appointment

    case, _, appointment, starts = appointment_in(
        session, 3, language=language, kind=AppointmentKind.COURT_HEARING
    )
    dispatch_due()
    assert len(sms) == 1  # reminded of the old time

    new_start = starts + timedelta(days=3)
    assert move_appointment(session=session, appointment_id=appointment.id, starts_at=new_start)
    session.commit()
    plan_case(session=session, case_id=case.id)  # the hourly planning leaves the notice be
    session.commit()
    dispatch_due()
    assert len(sms) == 2
    assert words in sms[1].body and clock_text(new_start, case.timezone) in sms[1].body
    assert clock_text(starts, case.timezone) not in sms[1].body or starts.time() == new_start.time()
    assert "STOP" in sms[1].body
    assert rows(session, case.id)[ReminderKind.APPOINTMENT_MOVED].status == ReminderStatus.SENT
    # Once; and the day before the new time, the reminder for it.
    plan_case(session=session, case_id=case.id)
    session.commit()
    dispatch_due()
    assert len(sms) == 2
    (planned,) = [
        row
        for row in session.exec(select(Reminder).where(Reminder.case_id == case.id)).all()
        if row.kind == ReminderKind.APPOINTMENT and row.status == ReminderStatus.SCHEDULED
    ]
    assert new_start - timedelta(hours=30) < planned.send_at < new_start - timedelta(hours=12)


def test_an_appointment_moved_before_its_reminder_went_sends_no_notice(ctx, session, sms):
    from admin.service import move_appointment

    case, _, appointment, starts = appointment_in(session, 72)
    new_start = starts + timedelta(days=2)
    assert (
        move_appointment(session=session, appointment_id=appointment.id, starts_at=new_start)
        is False
    )
    session.commit()
    assert dispatch_due().due == 0
    assert set(rows(session, case.id)) == {ReminderKind.APPOINTMENT}


def test_an_appointment_moved_twice_before_the_notice_went_sends_one_with_the_last_time(
    ctx, session, sms
):
    from admin.service import move_appointment

    case, _, appointment, starts = appointment_in(session, 3)
    dispatch_due()
    first, last = starts + timedelta(days=3), starts + timedelta(days=4, hours=1)
    assert move_appointment(session=session, appointment_id=appointment.id, starts_at=first)
    session.commit()
    # The second move finds the first notice still waiting: it will give the last time.
    assert not move_appointment(session=session, appointment_id=appointment.id, starts_at=last)
    session.commit()
    dispatch_due()
    assert len(sms) == 2
    assert clock_text(last, case.timezone) in sms[1].body
    assert last.astimezone(ZoneInfo(case.timezone)).strftime("%b") in sms[1].body


def test_a_moved_appointment_canceled_before_the_notice_went_sends_only_the_cancellation(
    ctx, session, sms
):
    from admin.service import cancel_appointment, move_appointment

    case, _, appointment, starts = appointment_in(session, 3)
    dispatch_due()
    assert move_appointment(
        session=session, appointment_id=appointment.id, starts_at=starts + timedelta(days=3)
    )
    session.commit()
    assert cancel_appointment(session=session, appointment_id=appointment.id) is True
    session.commit()
    dispatch_due()
    assert len(sms) == 2
    assert "canceled" in sms[1].body
    found = rows(session, case.id)
    notice = found[ReminderKind.APPOINTMENT_MOVED]
    assert (notice.status, notice.reason) == (ReminderStatus.SKIPPED, "appointment_canceled")


def test_a_move_notice_is_not_sent_after_a_stop(ctx, session, sms):
    from admin.service import move_appointment
    from bot.service import opt_out

    case, enrollment, appointment, starts = appointment_in(session, 3)
    dispatch_due()
    assert move_appointment(
        session=session, appointment_id=appointment.id, starts_at=starts + timedelta(days=3)
    )
    session.commit()
    opt_out(session=session, phone=enrollment.phone, enrollments=[enrollment], now=utcnow())
    session.commit()
    dispatch_due()
    assert len(sms) == 1
    notice = rows(session, case.id)[ReminderKind.APPOINTMENT_MOVED]
    assert (notice.status, notice.reason) == (ReminderStatus.CANCELED, "opted_out")


def test_an_appointment_moved_to_the_time_it_has_is_not_reminded_again(ctx, session, sms):
    from admin.service import move_appointment

    case, _, appointment, starts = appointment_in(session, 3)
    dispatch_due()
    assert len(sms) == 1
    # The move form sent with the time the appointment already has (sent twice, say).
    session.expire_all()
    move_appointment(session=session, appointment_id=appointment.id, starts_at=starts)
    session.commit()
    plan_case(session=session, case_id=case.id)
    session.commit()
    dispatch_due()
    assert len(sms) == 1
    assert [row.status for row in rows(session, case.id).values()] == [ReminderStatus.SENT]


def test_an_appointment_moved_days_later_after_its_reminder_is_reminded_the_day_before_again(
    ctx, session, sms
):
    from admin.service import move_appointment

    zone = zone_at(13)
    case = make_case(session, timezone=zone, next_due_date=None)
    make_enrollment(session, case)
    starts = utcnow().replace(second=0, microsecond=0) + timedelta(hours=3)
    appointment = Appointment(case_id=case.id, starts_at=starts, location="Room 4")
    session.add(appointment)
    session.commit()
    plan_case(session=session, case_id=case.id)
    session.commit()
    dispatch_due()
    [first] = rows(session, case.id).values()
    assert first.status == ReminderStatus.SENT

    moved = move_appointment(
        session=session, appointment_id=appointment.id, starts_at=starts + timedelta(days=3)
    )
    session.commit()
    assert moved is True  # the payer is told the new time now, and reminded of it again
    found = session.exec(select(Reminder).where(Reminder.case_id == case.id)).all()
    by_id = {row.id: row for row in found}
    assert by_id.pop(first.id).status == ReminderStatus.SENT
    by_kind = {row.kind: row for row in by_id.values()}
    assert set(by_kind) == {ReminderKind.APPOINTMENT, ReminderKind.APPOINTMENT_MOVED}
    again = by_kind[ReminderKind.APPOINTMENT]
    assert again.status == ReminderStatus.SCHEDULED
    assert again.send_at.replace(tzinfo=UTC) == starts + timedelta(days=2)
    assert len(sms) == 1


# --- quiet hours -------------------------------------------------------------------------------


def test_a_reminder_due_in_quiet_hours_is_deferred_to_eight_local_not_dropped(ctx, session, sms):
    case = due_today_case(session)
    night = zone_at(23)
    case.timezone = night  # the payer turns out to live where it is 11 PM now
    session.add(case)
    session.commit()
    summary = dispatch_due()
    assert (summary.deferred, summary.enqueued) == (1, 0)
    deferred = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (deferred.status, deferred.reason) == (ReminderStatus.DEFERRED, "quiet_hours")
    local = deferred.send_at.astimezone(ZoneInfo(night))
    assert local.time() == time(8) and local.date() == local_today(night) + timedelta(days=1)
    assert list(sms) == []
    # Still on the schedule: the dispatch at that hour picks it up again.
    assert dispatch_due(now=deferred.send_at, dry_run=True).enqueued == 1


def test_each_phone_is_held_to_its_own_window_while_the_batch_runs(config, session, sms):
    config["RQ_ASYNC"] = True  # dispatch only enqueues; the test runs the job with its clock
    from app import create_app

    app = create_app(config)
    with app.app_context():
        ny = ZoneInfo("America/New_York")
        case = make_case(session, timezone=None, next_due_date=date(2030, 6, 14))
        make_enrollment(session, case, PHONE)  # Boston, 08:00-21:00
        make_enrollment(session, case, "+12135550100")  # Los Angeles, three hours behind
        plan_case(session=session, case_id=case.id, now=datetime(2030, 6, 1, tzinfo=UTC))
        session.commit()
        half_past_ten = datetime(2030, 6, 14, 10, 30, tzinfo=ny)  # 7:30 AM in Los Angeles
        assert dispatch_due(now=half_past_ten).enqueued == 2  # today's, and the stale due-soon
        (job,) = app.extensions["queues"]["sms"].get_jobs()
        summary = reminders.send_reminders(claims=job.args[0], clock=lambda: half_past_ten)
        assert (summary.texts, summary.deferred, summary.skipped) == (1, 1, {"too_late": 1})
        assert [message.to for message in app.extensions["sms"].sent] == [PHONE]
        waiting = rows(session, case.id)[ReminderKind.DUE_TODAY]
        assert waiting.status == ReminderStatus.DEFERRED
        assert waiting.send_at == datetime(2030, 6, 14, 8, tzinfo=ZoneInfo("America/Los_Angeles"))

        later = waiting.send_at
        dispatch_due(now=later)
        job = app.extensions["queues"]["sms"].get_jobs()[-1]
        reminders.send_reminders(claims=job.args[0], clock=lambda: later)
        assert [message.to for message in app.extensions["sms"].sent] == [PHONE, "+12135550100"]
        assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT


def test_a_number_whose_area_code_spans_two_zones_is_not_texted_after_nine_in_either(
    queued_app, session
):
    case = make_case(session, timezone=None, next_due_date=date(2030, 6, 14))
    make_enrollment(session, case, "+16055550100")  # 605: Sioux Falls Central, Rapid City Mountain
    plan_case(session=session, case_id=case.id, now=datetime(2030, 6, 1, tzinfo=UTC))
    session.commit()
    chicago, denver = ZoneInfo("America/Chicago"), ZoneInfo("America/Denver")
    half_past_nine_central = datetime(2030, 6, 14, 21, 30, tzinfo=chicago)  # 20:30 in Denver
    summary = dispatch_due(now=half_past_nine_central)
    assert (summary.enqueued, summary.deferred) == (0, 2)
    waiting = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (waiting.status, waiting.reason) == (ReminderStatus.DEFERRED, "quiet_hours")
    assert waiting.send_at == datetime(2030, 6, 15, 8, tzinfo=denver)  # 09:00 Central

    # A job that was dispatched in time but runs late holds back the same way.
    other = make_case(session, timezone=None, next_due_date=date(2030, 6, 14))
    make_enrollment(session, other, "+16055550111")
    plan_case(session=session, case_id=other.id, now=datetime(2030, 6, 14, 12, tzinfo=UTC))
    session.commit()
    assert dispatch_due(now=datetime(2030, 6, 14, 20, 50, tzinfo=chicago)).enqueued == 1
    job = queued_app.extensions["queues"]["sms"].get_jobs()[-1]
    reminders.send_reminders(claims=job.args[0], clock=lambda: half_past_nine_central)
    assert list(queued_app.extensions["sms"].sent) == []
    assert rows(session, other.id)[ReminderKind.DUE_TODAY].reason == "quiet_hours"


# --- STOP, twice, and concurrency --------------------------------------------------------------


@pytest.fixture
def queued_app(config):
    """An app whose dispatch enqueues to Redis without running the jobs."""
    config["RQ_ASYNC"] = True
    from app import create_app

    application = create_app(config)
    with application.app_context():
        yield application


def run_queued_jobs(app) -> None:
    queues = list(app.extensions["queues"].values())
    SimpleWorker(queues, connection=app.extensions["redis"]).work(burst=True)


def test_stop_after_the_reminder_was_enqueued_but_before_it_ran_sends_nothing(queued_app, session):
    case = due_today_case(session)
    assert dispatch_due().enqueued == 1
    # The STOP webhook: every enrollment of the number opts out, the case's reminders cancel.
    enrollment = session.exec(select(Enrollment).where(Enrollment.phone == PHONE)).one()
    enrollment.status = EnrollmentStatus.OPTED_OUT
    session.add(enrollment)
    # Today's (queued) and tomorrow's overdue one (scheduled).
    assert cancel_pending(session=session, case_ids=[case.id], reason="opted_out") == 2
    session.commit()
    run_queued_jobs(queued_app)
    assert list(queued_app.extensions["sms"].sent) == []
    stopped = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (stopped.status, stopped.reason) == (ReminderStatus.CANCELED, "opted_out")


def test_stop_on_another_case_keeps_the_number_from_getting_this_reminder(queued_app, session):
    case = due_today_case(session)
    other = make_case(session)
    make_enrollment(session, other, PHONE, status=EnrollmentStatus.OPTED_OUT)
    dispatch_due()
    run_queued_jobs(queued_app)
    assert list(queued_app.extensions["sms"].sent) == []
    skipped = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (skipped.status, skipped.reason) == (ReminderStatus.SKIPPED, "opted_out")


def test_a_send_job_run_twice_sends_nothing_twice(queued_app, session):
    case = due_today_case(session)
    dispatch_due()
    (job,) = queued_app.extensions["queues"]["sms"].get_jobs()
    first = reminders.send_reminders(claims=job.args[0])
    second = reminders.send_reminders(claims=job.args[0])
    assert (first.texts, second.texts, second.reminders) == (1, 0, 0)
    assert len(queued_app.extensions["sms"].sent) == 1
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT


def test_a_slow_job_whose_rows_were_recovered_and_claimed_again_sends_nothing_more(
    queued_app, session
):
    first = due_today_case(session)
    second = due_today_case(session)  # the same number: the job's second text, in the same lane
    dispatch_due()
    (slow_job,) = queued_app.extensions["queues"]["sms"].get_jobs()
    console = queued_app.extensions["sms"]
    slow_text_started, new_job_sending, slow_job_done = (threading.Event() for _ in range(3))

    class Twilio:
        """Answers the slow job's first text only once a second job is sending its rows."""

        name = "console"

        def send(self, **text):
            if threading.current_thread().name == "new":
                new_job_sending.set()
                slow_job_done.wait(5)  # the new job is mid-send while the slow one goes on
            elif not slow_text_started.is_set():
                slow_text_started.set()
                new_job_sending.wait(5)
            return console.send(**text)

    queued_app.extensions["sms"] = Twilio()

    def run(claims) -> None:
        with queued_app.app_context():
            reminders.send_reminders(claims=claims)

    slow = threading.Thread(target=run, args=(slow_job.args[0],), name="slow")
    slow.start()
    assert slow_text_started.wait(5)
    # The dispatcher takes the slow job for dead and hands its rows to a new job.
    later = utcnow() + reminders.SENDING_TIMEOUT + timedelta(minutes=1)
    assert dispatch_due(now=later).recovered == 2
    replacement = queued_app.extensions["queues"]["sms"].get_jobs()[-1]
    new = threading.Thread(target=run, args=(replacement.args[0],), name="new")
    new.start()
    slow.join(5)
    slow_job_done.set()
    new.join(5)

    endings = Counter(message.body.split("case ending ")[1][:4] for message in console.sent)
    assert endings == {first.case_number[-4:]: 1, second.case_number[-4:]: 1}


def test_a_stop_being_saved_while_the_job_claims_the_text_stops_it(queued_app, session):
    first = due_today_case(session)
    second = due_today_case(session)  # the same number: the job's next text in the lane
    dispatch_due()
    (job,) = queued_app.extensions["queues"]["sms"].get_jobs()
    console = queued_app.extensions["sms"]
    stop = Session(db.engine(queued_app))

    class Twilio:
        """While the first text goes, a STOP's transaction cancels the second and commits late."""

        name = "console"

        def send(self, **text):
            if not console.sent:
                cancel_pending(session=stop, case_ids=[second.id], reason="opted_out")
                stop.flush()
                threading.Timer(0.3, stop.commit).start()
            return console.send(**text)

    queued_app.extensions["sms"] = Twilio()
    reminders.send_reminders(claims=job.args[0])
    stop.close()
    (sent,) = console.sent
    assert f"case ending {first.case_number[-4:]}" in sent.body
    assert rows(session, second.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.CANCELED


def test_two_dispatchers_at_once_claim_each_reminder_once(queued_app, session):
    for n in range(60):
        due_today_case(session, phone=f"+1617555{n:04d}")
    results = []

    def dispatch() -> None:
        with queued_app.app_context():
            results.append(dispatch_due())

    threads = [threading.Thread(target=dispatch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result.enqueued for result in results) == 60
    claims = [
        claim for job in queued_app.extensions["queues"]["sms"].get_jobs() for claim in job.args[0]
    ]
    assert len(claims) == len({reminder_id for reminder_id, _ in claims}) == 60
    run_queued_jobs(queued_app)
    assert len(queued_app.extensions["sms"].sent) == 60


def test_a_lost_job_is_recovered_and_phones_already_texted_are_not_texted_again(
    queued_app, session
):
    case = due_today_case(session)
    make_enrollment(session, case, "+16175550188")
    make_enrollment(session, case, "+16175550177")
    dispatch_due()
    reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
    # A worker took the job and died: one text went and was recorded, one was in flight.
    queued_app.extensions["redis"].flushdb()
    reminder.status = ReminderStatus.SENDING
    session.add(reminder)
    for phone, sid, status in (
        (PHONE, "SM" + "1" * 32, "queued"),
        ("+16175550188", None, "claimed"),
    ):
        session.add(
            ConversationTurn(
                case_id=case.id,
                phone=phone,
                direction="outbound",
                body="...",
                provider_message_id=sid,
                delivery_status=status,
                reminder_id=reminder.id,
            )
        )
    session.commit()

    assert dispatch_due().recovered == 0  # not yet: the job may still be running
    later = utcnow() + reminders.SENDING_TIMEOUT + timedelta(minutes=1)
    summary = dispatch_due(now=later)
    assert (summary.recovered, summary.enqueued) == (1, 1)
    run_queued_jobs(queued_app)
    assert [message.to for message in queued_app.extensions["sms"].sent] == ["+16175550177"]
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT
    by_phone = {
        turn.phone: turn.delivery_status for turn in turns(session, reminder_id=reminder.id)
    }
    assert by_phone["+16175550188"] == "unknown"


def test_a_reminder_whose_only_text_is_in_doubt_is_failed_for_staff_not_resent(queued_app, session):
    case = due_today_case(session)
    dispatch_due()
    reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
    session.add(
        ConversationTurn(
            case_id=case.id,
            phone=PHONE,
            direction="outbound",
            body="...",
            delivery_status="claimed",
            reminder_id=reminder.id,
        )
    )
    session.commit()
    run_queued_jobs(queued_app)
    assert list(queued_app.extensions["sms"].sent) == []
    failed = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (failed.status, failed.reason) == (ReminderStatus.FAILED, "outcome_unknown")


def test_cancel_pending_cancels_waiting_and_queued_rows_but_not_sent_ones(ctx, session):
    case = make_case(session, next_due_date=date(2030, 6, 14))
    make_enrollment(session, case)
    plan_case(session=session, case_id=case.id, now=datetime(2030, 6, 1, tzinfo=UTC))
    found = rows(session, case.id)
    found[ReminderKind.DUE_SOON].status = ReminderStatus.SENT
    found[ReminderKind.DUE_TODAY].status = ReminderStatus.QUEUED
    session.add_all(found.values())
    session.commit()
    assert cancel_pending(session=session, case_ids=[case.id], reason="opted_out") == 2
    session.commit()
    after = rows(session, case.id)
    assert after[ReminderKind.DUE_SOON].status == ReminderStatus.SENT
    assert {after[k].reason for k in (ReminderKind.DUE_TODAY, ReminderKind.OVERDUE)} == {
        "opted_out"
    }
    assert cancel_pending(session=session, case_ids=[], reason="opted_out") == 0


# --- Twilio errors (the real SDK against the local fake) ---------------------------------------


@pytest.fixture
def twilio(config):
    with FakeTwilio() as fake:
        config.update(fake.settings(), SMS_RATE_PER_SECOND=1000)
        from app import create_app

        application = create_app(config)
        with application.app_context():
            yield fake


def test_a_transient_error_is_retried_with_backoff_then_sent_once(twilio, session):
    case = due_today_case(session)
    twilio.fail_next(20429, status=429)
    summary = dispatch_due()
    assert summary.deferred == 1 and twilio.messages == []
    waiting = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (waiting.status, waiting.reason) == (ReminderStatus.DEFERRED, "retry:20429")
    assert timedelta(seconds=50) < waiting.send_at - utcnow() <= timedelta(minutes=1)

    assert dispatch_due().enqueued == 0  # not before the backoff
    dispatch_due(now=waiting.send_at)
    assert [message["to"] for message in twilio.messages] == [PHONE]
    sent = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (sent.status, sent.attempts) == (ReminderStatus.SENT, 2)
    (turn,) = turns(session, reminder_id=sent.id)
    assert turn.provider_message_id == twilio.messages[0]["sid"]


def test_holds_for_a_payment_in_flight_use_none_of_the_send_attempts(twilio, session):
    case = due_today_case(session, balance_cents=100_000)
    pay(session, case, 25_000, at=utcnow() - timedelta(hours=2), status=PaymentStatus.PENDING)
    now = utcnow()
    for _look in range(4):  # a day of waiting for the bank's approval
        assert dispatch_due(now=now).deferred == 1
        now = rows(session, case.id)[ReminderKind.DUE_TODAY].send_at.replace(tzinfo=UTC)
    held = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (held.reason, held.attempts) == ("payment_in_flight", 0)
    payment = session.exec(select(Payment).where(Payment.case_id == case.id)).one()
    payment.status = PaymentStatus.FAILED
    session.add(payment)
    session.commit()
    # The payment failed: the reminder goes, and a first transient error backs off a minute,
    # as for any reminder, with all MAX_ATTEMPTS still to come.
    twilio.fail_next(20429, status=429)
    dispatch_due()
    waiting = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (waiting.status, waiting.reason) == (ReminderStatus.DEFERRED, "retry:20429")
    assert waiting.attempts == 1
    assert timedelta(seconds=50) < waiting.send_at - utcnow() <= timedelta(minutes=1)


def test_a_reminder_tried_max_attempts_times_is_given_up_after_the_last(twilio, session):
    case = due_today_case(session)
    current_app.extensions["sms"] = TwilioGateway(
        DEFAULT_ACCOUNT_SID,
        DEFAULT_AUTH_TOKEN,
        from_number="+15005550006",
        base_url=f"http://127.0.0.1:{free_port()}",
    )
    now = utcnow()
    for attempt in range(1, reminders.MAX_ATTEMPTS + 1):
        dispatch_due(now=now)
        reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
        assert reminder.attempts == attempt
        now = reminder.send_at.replace(tzinfo=UTC)
    assert (reminder.status, reminder.reason) == (ReminderStatus.FAILED, "gave_up:network")
    assert twilio.messages == []


@pytest.mark.parametrize("lost", ["answer_too_late", "hung_up_after_sending", "server_error"])
def test_a_text_whose_answer_was_lost_is_never_sent_again_and_is_left_for_staff(
    twilio, session, lost
):
    case = due_today_case(session)
    if lost == "answer_too_late":
        current_app.extensions["sms"] = TwilioGateway(
            DEFAULT_ACCOUNT_SID,
            DEFAULT_AUTH_TOKEN,
            from_number="+15005550006",
            base_url=twilio.url,
            timeout=0.2,
        )
        twilio.answer_late(0.6)
    elif lost == "hung_up_after_sending":
        twilio.hang_up_after_accepting()
    else:
        twilio.fail_next(20500, status=500)  # Twilio failed, perhaps after creating it
    dispatch_due()
    reminder = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (reminder.status, reminder.reason) == (ReminderStatus.FAILED, "outcome_unknown")
    (turn,) = turns(session, reminder_id=reminder.id)
    assert (turn.delivery_status, turn.provider_message_id) == ("unknown", None)
    assert session.get(Enrollment, turn.enrollment_id).status == EnrollmentStatus.ACTIVE
    went = len(twilio.messages)

    plan_case(session=session, case_id=case.id)
    session.commit()
    summary = dispatch_due(now=utcnow() + timedelta(hours=1))
    assert (summary.due, len(twilio.messages)) == (0, went)


def test_a_refused_connection_sent_nothing_so_it_is_retried(twilio, session):
    case = due_today_case(session)
    current_app.extensions["sms"] = TwilioGateway(
        DEFAULT_ACCOUNT_SID,
        DEFAULT_AUTH_TOKEN,
        from_number="+15005550006",
        base_url=f"http://127.0.0.1:{free_port()}",
    )
    dispatch_due()
    waiting = rows(session, case.id)[ReminderKind.DUE_TODAY]
    assert (waiting.status, waiting.reason) == (ReminderStatus.DEFERRED, "retry:network")
    current_app.extensions["sms"] = TwilioGateway(
        DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, from_number="+15005550006", base_url=twilio.url
    )
    dispatch_due(now=waiting.send_at)
    assert [message["to"] for message in twilio.messages] == [PHONE]
    assert rows(session, case.id)[ReminderKind.DUE_TODAY].status == ReminderStatus.SENT


@pytest.mark.parametrize(
    ("code", "enrollment_status", "reminder_status", "reason"),
    [
        (21610, EnrollmentStatus.OPTED_OUT, ReminderStatus.SKIPPED, "opted_out"),
        (21211, EnrollmentStatus.UNDELIVERABLE, ReminderStatus.FAILED, "undeliverable"),
        (30006, EnrollmentStatus.UNDELIVERABLE, ReminderStatus.FAILED, "undeliverable"),
    ],
)
def test_a_permanent_error_stops_further_texts_to_the_number_with_the_reason(
    twilio, session, code, enrollment_status, reminder_status, reason
):
    case = due_today_case(session)
    other = due_today_case(session)  # the same number on a second case
    twilio.fail_for(PHONE, code)
    dispatch_due()
    assert len(twilio.messages) == 0
    enrollments = session.exec(select(Enrollment).where(Enrollment.phone == PHONE)).all()
    assert {e.status for e in enrollments} == {enrollment_status}
    assert all(str(code) in e.status_reason for e in enrollments)
    outcomes = {
        (r.status, r.reason)
        for c in (case, other)
        for r in [rows(session, c.id)[ReminderKind.DUE_TODAY]]
    }
    # The first text failed permanently; the second case's reminder was never tried.
    assert (reminder_status, reason) in outcomes
    attempted = session.execute(
        sa.select(sa.func.count())
        .select_from(ConversationTurn)
        .where(ConversationTurn.phone == PHONE)
    ).scalar_one()
    assert attempted == 1


# --- triggers ----------------------------------------------------------------------------------


def test_the_http_trigger_needs_the_bearer_token(config, session):
    from app import create_app

    assert create_app(config).test_client().post("/jobs/reminders/dispatch").status_code == 404
    config["JOBS_TOKEN"] = "s3cret-token"
    client = create_app(config).test_client()
    missing = client.post("/jobs/reminders/dispatch")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.post("/jobs/reminders/dispatch", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = client.post(
        "/jobs/reminders/dispatch", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert right.status_code == 200
    assert right.get_json()["due"] == 0


def test_the_http_trigger_sends_what_is_due(config, session):
    config["JOBS_TOKEN"] = "s3cret-token"
    from app import create_app

    app = create_app(config)
    with app.app_context():
        due_today_case(session)
    response = app.test_client().post(
        "/jobs/reminders/dispatch", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert response.get_json()["sent"] == 1
    assert len(app.extensions["sms"].sent) == 1


def test_the_cli_plans_and_dispatches_with_a_summary_and_dry_run_changes_nothing(
    app, runner, session
):
    with app.app_context():
        case = make_case(session, timezone=zone_at(13), next_due_date=None)
        make_enrollment(session, case)
        case.next_due_date = local_today(case.timezone)
        session.add(case)
        session.commit()
    planned = runner.invoke(args=["reminders", "plan"])
    assert planned.exit_code == 0, planned.output
    assert "Cases: 1. Planned: 2 new" in planned.output
    assert "1 too late" in planned.output

    dry = runner.invoke(args=["reminders", "dispatch", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "Due: 1. Would enqueue: 1" in dry.output
    assert list(app.extensions["sms"].sent) == []

    sent = runner.invoke(args=["reminders", "dispatch"])
    assert sent.exit_code == 0, sent.output
    assert "Enqueued: 1 in 1 job(s)" in sent.output and "Sent: 1." in sent.output
    assert "Skipped: none." in sent.output
    assert len(app.extensions["sms"].sent) == 1
