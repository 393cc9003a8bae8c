"""Reminder rules without a database: planning, quiet hours, paid this cycle, texts."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.cycles import (
    amount_owed,
    cycle_start,
    is_paid,
    minus_one_month,
    paid_toward_cycle,
    previous_cycle_start,
    previous_due_date,
)
from bot.segments import segments
from jobs import schedule
from jobs.reminders import (
    AppointmentInfo,
    Planned,
    Reach,
    ReminderPolicy,
    case_reach,
    clamp_send_time,
    common_window,
    effective_send_at,
    expires_at,
    phone_reach,
    plan_reminders,
    reminder_text,
    retry_delay,
)
from jobs.schedule import QuietHours, Window
from models import ReminderKind

NY = ZoneInfo("America/New_York")
DEFAULT = Window(time(8), time(21))
FLORIDA = Window(time(8), time(20))
POLICY = ReminderPolicy(agency="Demo County Child Support", agency_phone="800-555-0134")


def local(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone)


# --- planning ----------------------------------------------------------------------------------


def test_a_due_date_gets_three_reminders_at_ten_local_three_days_before_on_and_after():
    plans = plan_reminders(
        due_date=date(2026, 12, 1), appointments=(), reach=Reach(NY, DEFAULT), policy=POLICY
    )
    assert [(p.kind, p.cycle) for p in plans] == [
        (ReminderKind.DUE_SOON, "2026-12-01"),
        (ReminderKind.DUE_TODAY, "2026-12-01"),
        (ReminderKind.OVERDUE, "2026-12-01"),
    ]
    assert [local(p.send_at, NY) for p in plans] == [
        datetime(2026, 11, 28, 10, tzinfo=NY),
        datetime(2026, 12, 1, 10, tzinfo=NY),
        datetime(2026, 12, 2, 10, tzinfo=NY),
    ]


def test_an_appointment_is_reminded_a_day_before_and_its_cycle_names_it():
    starts = datetime(2026, 12, 3, 15, 30, tzinfo=NY)
    (plan,) = plan_reminders(
        due_date=None, appointments=[(42, starts)], reach=Reach(NY, DEFAULT), policy=POLICY
    )
    assert (plan.kind, plan.cycle, plan.appointment_id) == (ReminderKind.APPOINTMENT, "appt:42", 42)
    assert plan.send_at == starts - timedelta(days=1)
    assert plan.expires_at == starts


def test_a_send_time_outside_the_window_moves_inside_the_same_day():
    assert clamp_send_time(time(7), DEFAULT) == time(8)
    assert clamp_send_time(time(22, 30), DEFAULT) == time(20)
    assert clamp_send_time(time(20, 30), FLORIDA) == time(19)
    assert clamp_send_time(time(12), FLORIDA) == time(12)


def test_phones_in_different_states_share_the_narrower_window():
    assert common_window([DEFAULT, FLORIDA]) == FLORIDA
    assert common_window([Window(time(8), time(9)), Window(time(10), time(11))]) == Window(
        time(8), time(9)
    )


def test_a_case_zone_wins_over_the_phone_and_the_phone_gives_the_state():
    florida = phone_reach(case_tz="America/Chicago", phone="+13055550100", policy=POLICY)
    assert (florida.zone.key, florida.window) == ("America/Chicago", FLORIDA)
    by_phone = phone_reach(case_tz=None, phone="+12135550100", policy=POLICY)
    assert (by_phone.zone.key, by_phone.window) == ("America/Los_Angeles", DEFAULT)
    nowhere = phone_reach(case_tz=None, phone="+18005550100", policy=POLICY)
    assert nowhere.zone.key == POLICY.default_tz
    both = case_reach(case_tz=None, phones=["+16175550100", "+13055550100"], policy=POLICY)
    assert (both.zone.key, both.window) == ("America/New_York", FLORIDA)


DENVER = ZoneInfo("America/Denver")
CENTRAL = ZoneInfo("America/North_Dakota/Center")
SIOUX_FALLS = "+16055550100"  # the 605 area code spans Central and Mountain time


def test_a_number_spanning_two_zones_is_judged_by_both_unless_the_case_has_a_zone():
    either = phone_reach(case_tz=None, phone=SIOUX_FALLS, policy=POLICY)
    assert (either.zone, either.others) == (DENVER, (CENTRAL,))
    assert case_reach(case_tz=None, phones=[SIOUX_FALLS], policy=POLICY) == either
    known = phone_reach(case_tz="America/Chicago", phone=SIOUX_FALLS, policy=POLICY)
    assert (known.zone.key, known.others) == ("America/Chicago", ())
    half_past_eight_mountain = datetime(2030, 6, 14, 20, 30, tzinfo=DENVER)  # 21:30 Central
    assert not either.allows(half_past_eight_mountain)
    assert either.next_allowed(half_past_eight_mountain) == datetime(2030, 6, 15, 8, tzinfo=DENVER)


def test_a_send_time_late_in_the_day_goes_by_the_zone_where_it_is_still_allowed():
    evening = replace(POLICY, send_time=time(20, 30))
    either = Reach(DENVER, DEFAULT, (CENTRAL,))
    plans = plan_reminders(
        due_date=date(2030, 6, 14), appointments=(), reach=either, policy=evening
    )
    due_today = next(p for p in plans if p.kind == ReminderKind.DUE_TODAY)
    assert due_today.send_at == datetime(2030, 6, 14, 20, 30, tzinfo=CENTRAL)  # 19:30 Mountain
    morning = replace(POLICY, send_time=time(8, 15))
    plans = plan_reminders(
        due_date=date(2030, 6, 14), appointments=(), reach=either, policy=morning
    )
    due_today = next(p for p in plans if p.kind == ReminderKind.DUE_TODAY)
    assert due_today.send_at == datetime(2030, 6, 14, 8, 15, tzinfo=DENVER)  # 09:15 Central


def test_an_appointment_reminder_for_a_payer_in_either_zone_waits_for_both_windows():
    either = Reach(DENVER, DEFAULT, (CENTRAL,))
    starts = datetime(2030, 6, 15, 7, 30, tzinfo=DENVER)  # a day before: 08:30 Central only
    (plan,) = plan_reminders(due_date=None, appointments=[(7, starts)], reach=either, policy=POLICY)
    assert plan.send_at == datetime(2030, 6, 14, 8, tzinfo=DENVER)


def test_a_missed_send_time_becomes_the_next_allowed_moment_unless_too_late():
    plan = Planned(
        kind=ReminderKind.DUE_TODAY,
        cycle="2026-12-01",
        send_at=datetime(2026, 12, 1, 15, tzinfo=UTC),
        expires_at=datetime(2026, 12, 2, 5, tzinfo=UTC),
    )
    reach = Reach(NY, DEFAULT)
    before = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert effective_send_at(plan, now=before, reach=reach) == plan.send_at
    evening = datetime(2026, 12, 1, 23, tzinfo=UTC)  # 18:00 in New York
    assert effective_send_at(plan, now=evening, reach=reach) == evening
    night = datetime(2026, 12, 2, 3, tzinfo=UTC)  # 22:00: the next allowed moment is tomorrow
    assert effective_send_at(plan, now=night, reach=reach) is None


def test_reminders_expire_when_they_stop_being_true():
    due = date(2026, 12, 1)
    midnight = datetime(2026, 12, 1, tzinfo=NY)
    assert expires_at(ReminderKind.DUE_SOON, zone=NY, due_date=due) == midnight
    assert expires_at(ReminderKind.DUE_TODAY, zone=NY, due_date=due) == midnight + timedelta(1)
    overdue = expires_at(ReminderKind.OVERDUE, zone=NY, due_date=due, offset_days=1)
    assert overdue == datetime(2026, 12, 9, tzinfo=NY)


# --- paid this cycle ---------------------------------------------------------------------------


def test_the_cycle_starts_the_day_after_the_previous_due_date_in_local_time():
    assert cycle_start(date(2026, 12, 1), NY) == datetime(2026, 11, 2, tzinfo=NY)
    assert minus_one_month(date(2026, 3, 31)) == date(2026, 2, 28)
    assert minus_one_month(date(2028, 3, 30)) == date(2028, 2, 29)
    assert minus_one_month(date(2026, 1, 15)) == date(2025, 12, 15)


def test_paid_means_nothing_owed_or_this_cycles_payments_cover_the_installment():
    assert is_paid(amount_due_cents=25_000, balance_cents=0, paid_in_cycle_cents=0)
    assert is_paid(amount_due_cents=0, balance_cents=90_000, paid_in_cycle_cents=0)
    assert is_paid(amount_due_cents=25_000, balance_cents=75_000, paid_in_cycle_cents=25_000)
    assert not is_paid(amount_due_cents=25_000, balance_cents=75_000, paid_in_cycle_cents=10_000)
    # Owing less than the installment, paying that balance is enough.
    assert is_paid(amount_due_cents=25_000, balance_cents=5_000, paid_in_cycle_cents=5_000)
    assert amount_owed(amount_due_cents=25_000, balance_cents=5_000) == 5_000


def paid(this: int, previous: int | None, *, balance: int = 75_000) -> bool:
    """Paid this cycle, for a $250.00 installment."""
    return is_paid(
        amount_due_cents=25_000,
        balance_cents=balance,
        paid_in_cycle_cents=this,
        paid_in_previous_cycle_cents=previous,
    )


def test_last_cycles_installment_paid_late_pays_last_cycle_not_this_one():
    assert not paid(25_000, 0)
    left = paid_toward_cycle(
        amount_due_cents=25_000,
        balance_cents=75_000,
        paid_in_cycle_cents=25_000,
        paid_in_previous_cycle_cents=0,
    )
    assert left == 0
    assert paid(50_000, 0)  # last month's and this month's


def test_what_last_cycle_paid_short_or_over_moves_to_this_cycle():
    assert paid(25_000, 25_000)
    assert not paid(25_000, 10_000)  # $150.00 of this cycle's payment made up last cycle's
    assert paid(40_000, 10_000)
    assert paid(0, 50_000)  # two installments at once last cycle
    assert not paid(0, 45_000)


def test_a_previous_cycle_paytext_could_not_see_leaves_every_payment_to_this_cycle():
    assert paid(25_000, None)
    assert not paid(10_000, None)


def test_the_previous_installment_is_capped_by_the_balance_as_this_ones_is():
    # $300.00 left two cycles ago: $250.00 then, $50.00 now.
    assert paid(5_000, 25_000, balance=0)
    assert not paid(0, 25_000, balance=5_000)
    # $100.00 left a cycle ago, paid late this cycle: nothing is owed now.
    assert paid(10_000, 0, balance=0)


def test_the_previous_cycle_starts_the_day_after_the_due_date_before_it():
    assert previous_cycle_start(date(2026, 12, 1), NY) == datetime(2026, 10, 2, tzinfo=NY)
    # Mar 31 follows Feb 28, which follows Jan 31.
    assert previous_cycle_start(date(2026, 3, 31), NY) == datetime(2026, 2, 1, tzinfo=NY)


@pytest.mark.parametrize(
    ("due", "previous"),
    [
        # Any day before the month's last: the same day a month earlier.
        ("2026-01-15", "2025-12-15"),
        ("2027-01-01", "2026-12-01"),
        ("2026-11-29", "2026-10-29"),
        ("2026-12-30", "2026-11-30"),
        ("2026-04-29", "2026-03-29"),
        ("2028-02-28", "2028-01-28"),  # not February's last day in a leap year
        # ... or that month's last day when it is shorter: a schedule on the 29th-31st.
        ("2026-10-30", "2026-09-30"),
        ("2026-05-30", "2026-04-30"),
        ("2026-03-28", "2026-02-28"),
        ("2026-03-29", "2026-02-28"),
        ("2026-03-30", "2026-02-28"),
        ("2028-03-29", "2028-02-29"),
        ("2028-03-30", "2028-02-29"),
        # The month's last day: the previous month's last day.
        ("2026-11-30", "2026-10-31"),
        ("2026-12-31", "2026-11-30"),
        ("2027-01-31", "2026-12-31"),
        ("2026-10-31", "2026-09-30"),
        ("2026-05-31", "2026-04-30"),
        ("2026-04-30", "2026-03-31"),
        ("2026-03-31", "2026-02-28"),
        ("2028-03-31", "2028-02-29"),
        ("2026-02-28", "2026-01-31"),
        ("2028-02-29", "2028-01-31"),
        ("2100-02-28", "2100-01-31"),  # 2100 is no leap year
    ],
)
def test_cycle_starts_the_day_after_the_previous_due_date_month_ends_follow_month_ends(
    due, previous
):
    due, previous = date.fromisoformat(due), date.fromisoformat(previous)
    assert previous_due_date(due) == previous
    assert cycle_start(due, NY) == datetime.combine(previous + timedelta(days=1), time(0), NY)


def test_a_payment_on_a_due_date_never_counts_for_the_next_cycle_on_any_monthly_schedule():
    for day in range(1, 32):
        # The schedule on `day`: that day each month, or the month's last day when shorter.
        dues = []
        for month in range(12 * 2026, 12 * 2030):
            first = date(month // 12, month % 12 + 1, 1)
            last = (first + timedelta(days=31)).replace(day=1) - timedelta(days=1)
            dues.append(first.replace(day=min(day, last.day)))
        for before, due in itertools.pairwise(dues):
            start = cycle_start(due, NY).date()
            assert before < start <= due, (day, due)
            if previous_due_date(due) != before:
                # Only where the date cannot tell a schedule on the 28th-30th from one on the
                # 31st (Feb 28, Apr 30): the previous cycle runs to the end of its month.
                assert day in (28, 29, 30) and (due + timedelta(days=1)).day == 1, (day, due)
                assert start == due.replace(day=1), (day, due)


def test_transient_failures_back_off_up_to_an_hour():
    assert [retry_delay(n).total_seconds() // 60 for n in (1, 2, 3, 7, 30)] == [1, 2, 4, 60, 60]


# --- texts -------------------------------------------------------------------------------------


def due_text(language: str, **overrides) -> str:
    values = {
        "kind": ReminderKind.DUE_SOON,
        "language": language,
        "policy": POLICY,
        "case_number": "CS-004821",
        "zone": NY,
        "amount_cents": 25_000,
        "due_date": date(2026, 12, 1),
        "card_last4": "1234",
    }
    values.update(overrides)
    return reminder_text(**values)


def test_a_due_reminder_names_amount_date_card_agency_and_how_to_stop():
    text = due_text("en")
    assert text == (
        "Demo County Child Support: Your payment of $250.00 for case ending 4821 is due Dec 1. "
        "Reply PAY to pay $250.00 with your card ending 1234. Reply STOP to opt out."
    )
    assert segments(text) <= 2


def test_without_a_card_the_reminder_says_how_to_add_one_in_spanish_too():
    assert "Reply PAY to add a card" in due_text("en", card_last4=None)
    spanish = due_text("es", kind=ReminderKind.OVERDUE, card_last4=None)
    assert "PAGAR para agregar una tarjeta" in spanish
    assert "1 de dic." in spanish and "STOP" in spanish


@pytest.mark.parametrize(
    ("case_number", "named"), [("CS-004821", "4821"), ("CS-1", "CS-1"), ("smith", "SMITH")]
)
def test_a_due_reminder_names_the_case_as_the_invitation_and_replies_do(case_number, named):
    # A case number with under 4 digits is named whole: "case ending 1" or "case ending ." misled.
    assert f"for case ending {named} is due" in due_text("en", case_number=case_number)
    assert f"del caso que termina en {named} vence" in due_text("es", case_number=case_number)


def test_an_appointment_reminder_says_what_when_in_local_time_and_where_or_the_link():
    starts = datetime(2026, 12, 3, 20, 30, tzinfo=UTC)  # 3:30 PM in New York
    at_office = AppointmentInfo("court_hearing", starts, location="Family Court, Room 4")
    text = reminder_text(
        kind=ReminderKind.APPOINTMENT,
        language="en",
        policy=POLICY,
        case_number="CS-1",
        zone=NY,
        appointment=at_office,
    )
    assert "Thu, Dec 3 at 3:30 PM at Family Court, Room 4" in text
    by_video = AppointmentInfo("virtual_counter", starts, video_link="https://meet.example/x")
    spanish = reminder_text(
        kind=ReminderKind.APPOINTMENT,
        language="es",
        policy=POLICY,
        case_number="CS-1",
        zone=NY,
        appointment=by_video,
    )
    assert "https://meet.example/x" in spanish and "3:30 p.m." in spanish
    both = AppointmentInfo(
        "court_hearing",
        starts,
        location="Family Court, Room 4",
        video_link="https://meet.example/x",
    )
    text = reminder_text(
        kind=ReminderKind.APPOINTMENT,
        language="en",
        policy=POLICY,
        case_number="CS-1",
        zone=NY,
        appointment=both,
    )
    assert "at Family Court, Room 4, or join by video: https://meet.example/x" in text


# --- property: quiet hours across time zones and both clock changes --------------------------

ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Puerto_Rico",
    "America/St_Johns",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
]


def _changeover_days() -> list[date]:
    """Days on which some zone above moves its clocks, 2025-2028, with the days around them."""
    days = set()
    for name in ZONES:
        zone = ZoneInfo(name)
        moment = datetime(2025, 1, 1, tzinfo=UTC)
        while moment.year < 2029:
            later = moment + timedelta(hours=6)
            if moment.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset():
                day = later.astimezone(zone).date()
                days.update(day + timedelta(n) for n in range(-4, 5))
            moment = later
    return sorted(days)


CHANGEOVER_DAYS = _changeover_days()
due_dates = st.one_of(
    st.sampled_from(CHANGEOVER_DAYS),
    st.dates(min_value=date(2025, 1, 1), max_value=date(2028, 12, 31)),
)
clock_times = st.times().map(lambda t: t.replace(microsecond=0))
windows = st.sampled_from([DEFAULT, FLORIDA])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone_name=st.sampled_from(ZONES),
    due=due_dates,
    send_time=clock_times,
    window=windows,
    appointment_clock=clock_times,
    appointment_days=st.integers(min_value=1, max_value=30),
)
def test_no_send_time_falls_in_quiet_hours_and_no_reminder_is_lost(
    zone_name, due, send_time, window, appointment_clock, appointment_days
):
    zone = ZoneInfo(zone_name)
    policy = ReminderPolicy(quiet=QuietHours(default=window, by_state={}), send_time=send_time)
    starts = datetime.combine(due + timedelta(appointment_days), appointment_clock, tzinfo=zone)
    plans = plan_reminders(
        due_date=due, appointments=[(7, starts)], reach=Reach(zone, window), policy=policy
    )
    # None lost, none doubled; a cancellation or move notice is made by that event, not planned.
    unplanned = {ReminderKind.APPOINTMENT_CANCELED, ReminderKind.APPOINTMENT_MOVED}
    planned_kinds = sorted(set(ReminderKind) - unplanned)
    assert sorted(p.kind for p in plans) == planned_kinds
    for plan in plans:
        assert local(plan.send_at, zone).time() in window, plan
        if plan.kind != ReminderKind.APPOINTMENT:
            # Each due reminder goes out on its own day, so it is never too late to be true.
            offset = policy.offsets[plan.kind]
            assert local(plan.send_at, zone).date() == due + timedelta(offset), plan
            assert plan.send_at < plan.expires_at


@settings(max_examples=400, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    day=st.sampled_from(CHANGEOVER_DAYS),
    clock=clock_times,
    window=windows,
)
def test_a_reminder_caught_in_quiet_hours_is_deferred_into_the_window_not_dropped(
    zone_name, day, clock, window
):
    zone = ZoneInfo(zone_name)
    now = datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)
    plan = Planned(
        kind=ReminderKind.OVERDUE,
        cycle=day.isoformat(),
        send_at=now - timedelta(hours=1),
        expires_at=now + timedelta(days=7),
    )
    at = effective_send_at(plan, now=now, reach=Reach(zone, window))
    assert at is not None and at >= now
    assert local(at, zone).time() in window
    assert at - now < timedelta(days=1, hours=2)  # the next opening, not a later one
    if schedule.is_allowed(now, tz=zone, window=window):
        assert at == now


@pytest.mark.parametrize("zone_name", ["America/New_York", "America/Los_Angeles"])
def test_reminders_on_both_clock_change_days_still_go_at_ten_local(zone_name):
    zone = ZoneInfo(zone_name)
    # The due-soon reminders fall on the changeover days themselves (Mar 8 and Nov 1, 2026).
    for due in (date(2026, 3, 11), date(2026, 11, 4)):
        for plan in plan_reminders(
            due_date=due, appointments=(), reach=Reach(zone, DEFAULT), policy=POLICY
        ):
            assert local(plan.send_at, zone).time() == time(10)
