"""Reminders: planned as rows, dispatched in batches through RQ, re-checked and paced at send.

The database is the schedule. `plan_case`/`plan_all` keep one `Reminder` row per (case, kind,
cycle) with its send time; `dispatch_due` (cron, CLI, HTTP trigger) claims the rows that are due
and enqueues send jobs; `send_reminders` (the job) re-checks everything just before each text.

Cycles: a due-cycle reminder's cycle is its due date (`2026-05-01`); an appointment reminder's is
`appt:<appointment id>`. When a due date moves, the cycle's unsent rows move with it.

Paid this cycle: judged by billing.cycles, which says how. A cycle only a payment still in flight
covers holds its reminder (deferred, `payment_in_flight`) until that payment succeeds or fails.

Never twice: dispatch claims rows atomically (status scheduled -> queued, `claim_token` + 1);
a job only works on rows whose status and token still match, moving them to `sending`. Before
each text, a turn for (reminder, phone) is committed with status `claimed`, and only while the
row is still `sending` under the job's token; only then is Twilio called and
the answer recorded. A row whose job vanished (Redis lost, worker killed) is claimed again after
a timeout, and the new job skips every phone that already has a turn for the reminder; if the
old job was only slow, its next claim finds the token changed and it sends nothing more. So
each phone gets each reminder at most once. The only texts a crash can leave in doubt are those
in flight at that moment (at most SEND_LANES per worker: claimed, but Twilio's answer never
recorded): they are not sent again, and are recorded as `outcome_unknown` for staff to see,
since Twilio's API offers no idempotency key to ask whether they went. A send
whose answer is lost without a crash (a read timeout, a connection dropped after the request
went out, an HTTP 5xx) is in the same doubt and treated the same way; only an error that
proves nothing reached Twilio (connection refused, DNS, 429) is retried.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from billing.cycles import paid_in_cycles, paid_toward_cycle, previous_due_date, still_owed
from billing.service import COUNTED, IN_FLIGHT
from bot import messages
from bot.dialogue import case_ending
from bot.outbound import held_invites_due, mark_failure, status_callback_url
from bot.sms import Failure
from db import session_scope
from jobs import schedule
from jobs.ratelimit import Pacer
from jobs.schedule import QuietHours, Window, local_midnight
from models import (
    Appointment,
    AppointmentStatus,
    CardOnFile,
    Case,
    CaseStatus,
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentStatus,
    Payment,
    Reminder,
    ReminderKind,
    ReminderStatus,
    utcnow,
)

log = logging.getLogger(__name__)

SEND_BATCH = 100
"""Reminders per send job: one RQ job costs ~130 µs and ~550 bytes of Redis; a batch shares it."""

FOLD_ANSWER_WITHIN = 0.002
"""A text's answer waits to be saved with the next claim only if that comes this soon (s)."""

SEND_LANES = 4
"""Texts one worker has in flight at once: sends spend most of their time waiting on Twilio
(~100 ms per API call in production) and the database, so a worker overlaps a few."""

CLAIM_CHUNK = 5000
"""Rows claimed per statement when dispatching."""

PLAN_CHUNK = 1000
"""Cases planned per transaction by `plan_all`."""

SEND_JOB_TIMEOUT = 600
"""Seconds RQ lets a send job run before stopping it; a batch at 1 msg/s still fits."""

SENDING_TIMEOUT = timedelta(minutes=15)
"""A row left `sending` this long belongs to a dead job (RQ stops jobs after SEND_JOB_TIMEOUT)."""

QUEUED_TIMEOUT = timedelta(minutes=30)
"""A row left `queued` this long has lost its job (Redis flushed); claiming it again is safe."""

MAX_ATTEMPTS = 10
"""Tries after which a reminder still failing with transient errors is given up; a claim that
sends nothing (held for quiet hours or a payment in flight, re-planned) is no try."""

OVERDUE_STALE_AFTER = timedelta(days=7)
"""An overdue reminder not sent within a week of its day is no longer sent."""

IN_FLIGHT_RECHECK = timedelta(hours=6)
"""How long a reminder whose cycle only a payment still in flight covers is held before it is
judged again, at the latest (then, within the payer's window): skipped as paid once the payment
succeeded, sent once it failed, held again while it is still in flight (a bank approval waits up
to a day). Every dispatch wakes the held reminders of cases with no payment in flight any more
(_wake_settled), so the outcome is acted on within the minute; a look is a claim but no try, so
it leaves MAX_ATTEMPTS to send failures."""

SMS_QUEUE = "sms"
"""The RQ queue send jobs go to."""

# Rows planning may (re)schedule; CANCELED is here so a payer who opts back in gets the rest.
PLANNABLE = (ReminderStatus.SCHEDULED, ReminderStatus.DEFERRED, ReminderStatus.CANCELED)
# Rows dispatch picks up when their time comes.
DUE = (ReminderStatus.SCHEDULED, ReminderStatus.DEFERRED)
# Rows a job owns or is about to own; STOP cancels these too, and the job re-checks per text.
CANCELABLE = (*DUE, ReminderStatus.QUEUED, ReminderStatus.SENDING)

DUE_KINDS = (ReminderKind.DUE_SOON, ReminderKind.DUE_TODAY, ReminderKind.OVERDUE)
UNPLANNED_KINDS = (ReminderKind.APPOINTMENT_CANCELED, ReminderKind.APPOINTMENT_MOVED)
"""Texts made by an event (a cancellation, a move), not by planning: planning leaves them alone."""

# Turn delivery statuses of our own: the text is about to go, or went but its answer was lost.
CLAIMED = "claimed"
UNKNOWN = "unknown"


# --- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReminderPolicy:
    """The settings reminders follow."""

    quiet: QuietHours = field(default_factory=QuietHours)
    offsets: Mapping[ReminderKind, int] = field(
        default_factory=lambda: {ReminderKind(k): v for k, v in schedule.DEFAULT_OFFSETS.items()}
    )
    send_time: time = schedule.DEFAULT_SEND_TIME
    default_tz: str = schedule.DEFAULT_TIMEZONE
    agency: str = "PayText"
    agency_phone: str = "800-555-0134"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReminderPolicy:
        """Parse the reminder settings; a malformed one raises ValueError naming it."""
        return cls(
            quiet=QuietHours(
                default=schedule.parse_window(config["QUIET_HOURS"]),
                by_state=schedule.parse_windows(config["QUIET_HOURS_BY_STATE"]),
            ),
            offsets={
                ReminderKind(str(kind)): days
                for kind, days in schedule.parse_offsets(config["REMINDER_OFFSETS"]).items()
            },
            send_time=schedule.parse_clock(config["REMINDER_SEND_TIME"]),
            default_tz=config["DEFAULT_TIMEZONE"],
            agency=config["AGENCY_NAME"],
            agency_phone=config["AGENCY_PHONE"],
        )


def current_policy() -> ReminderPolicy:
    """The running app's reminder policy."""
    return ReminderPolicy.from_config(current_app.config)


# --- where a payer is (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """The clock and window a text to one payer is judged by.

    `zone` is the clock dates and times are written in; `others` are further zones the payer
    may be in (a number whose area code spans several, on a case with no zone of its own).
    A text goes only while the window is open by every one of those clocks.
    """

    zone: ZoneInfo
    window: Window
    others: tuple[ZoneInfo, ...] = ()

    def allows(self, at: datetime) -> bool:
        """Whether a text may go out at `at`."""
        if not self.others:
            return schedule.is_allowed(at, tz=self.zone, window=self.window)
        return schedule.is_allowed_everywhere(at, zones=self.zones, window=self.window)

    def next_allowed(self, at: datetime) -> datetime:
        """`at` itself if a text may go out then, else the next moment one may."""
        if not self.others:
            return schedule.next_allowed(at, tz=self.zone, window=self.window)
        return schedule.next_allowed_everywhere(at, zones=self.zones, window=self.window)

    @property
    def zones(self) -> tuple[ZoneInfo, ...]:
        """Every zone the payer may be in."""
        return (self.zone, *self.others)


_ZONES: dict[tuple[str, str, str], tuple[ZoneInfo, ...]] = {}
_STATES: dict[str, str | None] = {}


def _prefix(phone: str) -> str:
    # phonenumbers maps North American numbers to zones and places by +1 NPA-NXX at most, so
    # every number sharing those 8 characters resolves alike; caching by them keeps 100,000
    # payers from costing 100,000 lookups.
    return phone[:8] if phone.startswith("+1") and len(phone) == 12 else phone


def _zones_for(case_tz: str | None, phone: str | None, default: str) -> tuple[ZoneInfo, ...]:
    key = (case_tz or "", default, _prefix(phone or ""))
    zones = _ZONES.get(key)
    if zones is None:
        if len(_ZONES) > 100_000:
            _ZONES.clear()
        zones = _ZONES[key] = schedule.resolve_timezones(
            case_tz=case_tz, phone=phone, default=default
        )
    return zones


def _state_for(phone: str) -> str | None:
    key = _prefix(phone)
    if key not in _STATES:
        if len(_STATES) > 100_000:
            _STATES.clear()
        _STATES[key] = schedule.state_for_phone(phone)
    return _STATES[key]


def phone_reach(*, case_tz: str | None, phone: str, policy: ReminderPolicy) -> Reach:
    """One phone's clocks (the case's zone, else the number's, else the default) and window."""
    zone, *others = _zones_for(case_tz, phone, policy.default_tz)
    return Reach(zone, policy.quiet.window_for(_state_for(phone)), tuple(others))


def case_reach(*, case_tz: str | None, phones: Sequence[str], policy: ReminderPolicy) -> Reach:
    """The clocks of a case's first phone and the window every one of its phones allows."""
    zone, *others = _zones_for(case_tz, phones[0] if phones else None, policy.default_tz)
    windows = [policy.quiet.window_for(_state_for(phone)) for phone in phones]
    return Reach(zone, common_window(windows) if windows else policy.quiet.default, tuple(others))


def common_window(windows: Sequence[Window]) -> Window:
    """The part of the day every window allows; the first window when they share none."""
    start, end = max(w.start for w in windows), min(w.end for w in windows)
    # Phones in disjoint windows are each deferred at send time instead.
    return Window(start, end) if start < end else windows[0]


# --- planning (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One reminder a case should have: its nominal send time and when it stops making sense."""

    kind: ReminderKind
    cycle: str
    send_at: datetime
    expires_at: datetime
    appointment_id: int | None = None


def appointment_cycle(appointment_id: int, *, moved_at: datetime | None = None) -> str:
    """The cycle of an appointment's reminder; one for each move after a reminder was done."""
    if moved_at is None:
        return f"appt:{appointment_id}"
    return f"appt:{appointment_id}@{moved_at.astimezone(UTC):%Y%m%dT%H%M%S}"


def clamp_send_time(send_time: time, window: Window) -> time:
    """The send time moved inside the window, so a reminder keeps its day."""
    if send_time < window.start:
        return window.start
    if send_time >= window.end:
        latest = (datetime.combine(date(2000, 1, 1), window.end) - timedelta(hours=1)).time()
        return max(latest, window.start)
    return send_time


def expires_at(
    kind: ReminderKind,
    *,
    zone: ZoneInfo,
    due_date: date | None = None,
    offset_days: int = 0,
    starts_at: datetime | None = None,
) -> datetime:
    """When a reminder stops being true: 'due on' after the day, 'appointment' once it starts."""
    if kind == ReminderKind.APPOINTMENT:
        assert starts_at is not None
        return starts_at
    assert due_date is not None
    if kind == ReminderKind.DUE_SOON:
        return local_midnight(due_date, zone)
    if kind == ReminderKind.DUE_TODAY:
        return local_midnight(due_date + timedelta(days=1), zone)
    day = due_date + timedelta(days=offset_days)
    return local_midnight(day, zone) + OVERDUE_STALE_AFTER


def plan_reminders(
    *,
    due_date: date | None,
    appointments: Sequence[tuple[int, datetime]],
    reach: Reach,
    policy: ReminderPolicy,
) -> list[Planned]:
    """Every reminder a case should have, at nominal times inside its window."""
    planned: list[Planned] = []
    if due_date is not None:
        offsets = {schedule.ReminderKind(str(kind)): days for kind, days in policy.offsets.items()}
        by_offset = tuple(sorted(offsets.items()))
        send_time = clamp_send_time(policy.send_time, reach.window)
        # The send times by each clock the payer may keep, in the reach's order.
        by_zone = [
            _cycle_times(due_date, zone, reach.window, by_offset, send_time) for zone in reach.zones
        ]
        for kind_times in zip(*by_zone, strict=True):
            kind = kind_times[0][0]
            planned.append(
                Planned(
                    kind=kind,
                    cycle=due_date.isoformat(),
                    send_at=first_allowed(reach, [at for _, at in kind_times]),
                    expires_at=expires_at(
                        kind,
                        zone=reach.zone,
                        due_date=due_date,
                        offset_days=policy.offsets[kind],
                    ),
                )
            )
    for appointment_id, starts_at in appointments:
        send_at = appointment_send_at(starts_at, reach)
        planned.append(
            Planned(
                kind=ReminderKind.APPOINTMENT,
                cycle=appointment_cycle(appointment_id),
                send_at=send_at,
                expires_at=starts_at,
                appointment_id=appointment_id,
            )
        )
    return planned


def appointment_send_at(starts_at: datetime, reach: Reach) -> datetime:
    """When to remind of an appointment: a day before, out of quiet hours by every clock."""
    return first_allowed(
        reach,
        [
            schedule.appointment_send_time(starts_at, tz=zone, window=reach.window)
            for zone in reach.zones
        ],
    )


def first_allowed(reach: Reach, times: Sequence[datetime]) -> datetime:
    """Of a send time worked out by each of the reach's clocks, the first every clock allows.

    With none allowed, the next allowed moment after the first. A payer in Mountain or Central
    time with a 20:30 send time gets 20:30 Central (19:30 Mountain) on the day, since 20:30
    Mountain is 21:30 Central, rather than the next morning, a day late.
    """
    if not reach.others:
        return times[0]
    allowed = [at for at in times if reach.allows(at)]
    return allowed[0] if allowed else reach.next_allowed(times[0])


_CYCLE_CACHE: dict[tuple, tuple[tuple[ReminderKind, datetime], ...]] = {}


def _cycle_times(
    due_date: date,
    zone: ZoneInfo,
    window: Window,
    offsets: tuple[tuple[schedule.ReminderKind, int], ...],
    send_time: time,
) -> tuple[tuple[ReminderKind, datetime], ...]:
    # Cases share due dates, zones and windows by the thousand; compute each combination once.
    key = (due_date, zone.key, window, offsets, send_time)
    found = _CYCLE_CACHE.get(key)
    if found is None:
        times = schedule.due_cycle_send_times(
            due_date, tz=zone, window=window, offsets=dict(offsets), send_time=send_time
        )
        found = tuple((ReminderKind(str(kind)), at) for kind, at in sorted(times.items()))
        if len(_CYCLE_CACHE) > 50_000:
            _CYCLE_CACHE.clear()
        _CYCLE_CACHE[key] = found
    return found


def effective_send_at(planned: Planned, *, now: datetime, reach: Reach) -> datetime | None:
    """When a planned reminder should go: its time, or the next allowed moment if that passed.

    None when that moment is too late for the reminder to be true.
    """
    at = planned.send_at
    if at < now:
        at = reach.next_allowed(now)
    return at if at < planned.expires_at else None


# --- texts (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppointmentInfo:
    """What an appointment reminder says."""

    kind: str
    starts_at: datetime
    location: str | None = None
    video_link: str | None = None


def reminder_text(
    *,
    kind: ReminderKind,
    language: str,
    policy: ReminderPolicy,
    case_number: str,
    zone: ZoneInfo,
    amount_cents: int = 0,
    due_date: date | None = None,
    card_last4: str | None = None,
    appointment: AppointmentInfo | None = None,
) -> str:
    """The reminder in the payer's language, with amount, date and card, or the appointment."""
    params: dict[str, Any] = {"agency": policy.agency, "tz": zone.key}
    if kind == ReminderKind.APPOINTMENT_CANCELED:
        assert appointment is not None
        params.update(
            kind=appointment.kind, when=appointment.starts_at, agency_phone=policy.agency_phone
        )
        return messages.render("appt_canceled", params, language)
    if kind == ReminderKind.APPOINTMENT_MOVED:
        assert appointment is not None
        params.update(kind=appointment.kind, when=appointment.starts_at)
        return messages.render("appt_moved", params, language)
    if kind == ReminderKind.APPOINTMENT:
        assert appointment is not None
        params.update(kind=appointment.kind, when=appointment.starts_at)
        if appointment.video_link and appointment.location:
            key = "appt_reminder_both"
            params.update(location=appointment.location, video_link=appointment.video_link)
        elif appointment.video_link:
            key, params["video_link"] = "appt_reminder_video", appointment.video_link
        elif appointment.location:
            key, params["location"] = "appt_reminder", appointment.location
        else:
            key, params["agency_phone"] = "appt_reminder_no_place", policy.agency_phone
        return messages.render(key, params, language)
    # Named as every other text names the case: "CS-1" and "SMITH" whole, not "1" or nothing.
    params.update(case_last4=case_ending(case_number), amount=amount_cents, due_date=due_date)
    if card_last4:
        key, params["last4"] = str(kind), card_last4
    else:
        key = f"{kind}_no_card"
    return messages.render(key, params, language)


def retry_delay(attempts: int) -> timedelta:
    """Backoff after a transient failure: 1, 2, 4 ... minutes, at most an hour."""
    return timedelta(minutes=min(60, 2 ** max(0, attempts - 1)))


# --- planning (database) -----------------------------------------------------------------------


@dataclass
class PlanSummary:
    """What a planning run changed."""

    cases: int = 0
    planned: int = 0
    updated: int = 0
    unchanged: int = 0
    canceled: Counter = field(default_factory=Counter)
    too_late: int = 0
    failed: int = 0
    """Cases left as they were because their data cannot be planned (logged with their id)."""

    def add(self, other: PlanSummary) -> None:
        """Fold another summary into this one."""
        self.cases += other.cases
        self.planned += other.planned
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.canceled.update(other.canceled)
        self.too_late += other.too_late
        self.failed += other.failed

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON and job results."""
        return {
            "cases": self.cases,
            "planned": self.planned,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "canceled": dict(self.canceled),
            "too_late": self.too_late,
            "failed": self.failed,
        }


def plan_case(*, session: Session, case_id: int, now: datetime | None = None) -> None:
    """Bring one case's reminder rows in line with its due date, phones and appointments.

    Call it after a due date, an appointment or an enrollment changes; the caller commits.
    """
    _plan_cases(session, [case_id], current_policy(), now or utcnow())


def plan_all(
    *, now: datetime | None = None, progress: Callable[[int, int], None] | None = None
) -> PlanSummary:
    """Plan every case that has an active phone; committed per chunk of cases."""
    now = now or utcnow()
    policy = current_policy()
    summary = PlanSummary()
    with session_scope() as session:
        summary.canceled.update(_cancel_unreachable(session, now))
        session.commit()
        active = sa.exists().where(
            Enrollment.case_id == Case.id, Enrollment.status == EnrollmentStatus.ACTIVE
        )
        case_ids = list(
            session.execute(
                sa.select(Case.id).where(Case.status == CaseStatus.OPEN, active).order_by(Case.id)
            ).scalars()
        )
        for start in range(0, len(case_ids), PLAN_CHUNK):
            chunk = case_ids[start : start + PLAN_CHUNK]
            summary.add(_plan_cases(session, chunk, policy, now))
            session.commit()
            if progress:
                progress(min(start + PLAN_CHUNK, len(case_ids)), len(case_ids))
    return summary


def _cancel_unreachable(session: Session, now: datetime) -> Counter:
    """Cancel waiting rows of closed cases and of cases left with no active phone."""
    table = Reminder.__table__
    counts: Counter = Counter()
    closed = sa.select(Case.id).where(Case.status != CaseStatus.OPEN)
    active = sa.select(Enrollment.case_id).where(Enrollment.status == EnrollmentStatus.ACTIVE)
    for reason, condition in (
        ("case_closed", table.c.case_id.in_(closed)),
        ("not_enrolled", table.c.case_id.not_in(active)),
    ):
        result = session.execute(
            sa.update(table)
            .where(table.c.status.in_(DUE), condition)
            .values(status=ReminderStatus.CANCELED, reason=reason, updated_at=now)
        )
        if result.rowcount:
            counts[reason] += result.rowcount
    return counts


@dataclass
class _Row:
    """The parts of a reminder row planning and sending look at."""

    id: int
    case_id: int
    kind: ReminderKind
    cycle: str
    status: ReminderStatus
    send_at: datetime
    appointment_id: int | None
    attempts: int = 0
    reason: str | None = None
    sent_at: datetime | None = None
    token: int = 0
    """The claim's token (`claim_token`) the job holds the row by."""
    updated_at: datetime | None = None


_ROW_COLUMNS = (
    Reminder.id,
    Reminder.case_id,
    Reminder.kind,
    Reminder.cycle,
    Reminder.status,
    Reminder.send_at,
    Reminder.appointment_id,
    Reminder.attempts,
    Reminder.reason,
    Reminder.sent_at,
    Reminder.claim_token,
    Reminder.updated_at,
)


def _plan_cases(
    session: Session, case_ids: Sequence[int], policy: ReminderPolicy, now: datetime
) -> PlanSummary:
    """Plan a chunk of cases with a handful of statements."""
    summary = PlanSummary()
    cases = {
        row.id: row
        for row in session.execute(
            sa.select(Case.id, Case.status, Case.timezone, Case.next_due_date).where(
                Case.id.in_(case_ids)
            )
        )
    }
    phones: dict[int, list[str]] = defaultdict(list)
    for case_id, phone in session.execute(
        sa.select(Enrollment.case_id, Enrollment.phone)
        .where(Enrollment.case_id.in_(case_ids), Enrollment.status == EnrollmentStatus.ACTIVE)
        .order_by(Enrollment.id)
    ):
        phones[case_id].append(phone)
    appointments: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
    changed_at: dict[int, datetime] = {}
    for appointment_id, case_id, starts_at, updated_at in session.execute(
        sa.select(
            Appointment.id, Appointment.case_id, Appointment.starts_at, Appointment.updated_at
        )
        .where(
            Appointment.case_id.in_(case_ids),
            Appointment.status == AppointmentStatus.SCHEDULED,
            Appointment.starts_at > now,
        )
        .order_by(Appointment.starts_at)
    ):
        appointments[case_id].append((appointment_id, starts_at))
        changed_at[appointment_id] = updated_at
    targets = {case.next_due_date.isoformat() for case in cases.values() if case.next_due_date}
    existing: dict[int, list[_Row]] = defaultdict(list)
    for row in session.execute(
        sa.select(*_ROW_COLUMNS).where(
            Reminder.case_id.in_(case_ids),
            sa.or_(
                Reminder.status.in_(DUE),
                Reminder.cycle.in_(targets or {""}),
                # Every reminder of these appointments: one done before a move asks for another.
                Reminder.appointment_id.in_(list(changed_at) or [0]),
            ),
        )
    ):
        existing[row.case_id].append(_Row(*row))

    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for case_id in case_ids:
        case = cases.get(case_id)
        if case is None:
            continue
        summary.cases += 1
        rows = existing.get(case_id, [])
        if case.status != CaseStatus.OPEN or not phones.get(case_id):
            reason = "case_closed" if case.status != CaseStatus.OPEN else "not_enrolled"
            for row in rows:
                if row.status in DUE:
                    updates.append(_change(row, now, status=ReminderStatus.CANCELED, reason=reason))
                    summary.canceled[reason] += 1
            continue
        try:
            reach = case_reach(case_tz=case.timezone, phones=phones[case_id], policy=policy)
            plans = plan_reminders(
                due_date=case.next_due_date,
                appointments=appointments.get(case_id, ()),
                reach=reach,
                policy=policy,
            )
            plans = _after_moves(plans, rows, changed_at)
            part = _match(case_id, rows, plans, reach, policy, now)
        except (OverflowError, ValueError):
            # One case's bad data (a due date in year 9999, say) must not hold up the others.
            log.exception("case %s: reminders not planned; its dates cannot be planned", case_id)
            summary.failed += 1
            continue
        inserts.extend(part.inserts)
        updates.extend(part.updates)
        summary.add(part.summary)

    if inserts:
        session.execute(_insert_ignoring_duplicates(session), inserts)
    if updates:
        table = Reminder.__table__
        session.execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                # A dispatcher may have claimed the row meanwhile; then it is the job's to judge.
                # (An OR, not IN: an expanding IN cannot take part in executemany.)
                sa.or_(*(table.c.status == status for status in PLANNABLE)),
            )
            .values(
                cycle=sa.bindparam("b_cycle"),
                send_at=sa.bindparam("b_send_at"),
                status=sa.bindparam("b_status"),
                reason=sa.bindparam("b_reason"),
                appointment_id=sa.bindparam("b_appointment_id"),
                updated_at=sa.bindparam("b_updated_at"),
            ),
            updates,
        )
    return summary


def _after_moves(
    plans: Sequence[Planned], rows: Sequence[_Row], changed_at: Mapping[int, datetime]
) -> list[Planned]:
    """Appointment reminders given a cycle of their own when the appointment moved after its
    reminder was done (sent, or skipped as too late): that text named the old time, or none
    went, so the new time gets a reminder of its own rather than none at all."""
    done = (ReminderStatus.SENT, ReminderStatus.SKIPPED, ReminderStatus.FAILED)
    out: list[Planned] = []
    for plan in plans:
        moved_at = changed_at.get(plan.appointment_id) if plan.appointment_id else None
        if moved_at is not None:
            finished = [
                row
                for row in rows
                if row.appointment_id == plan.appointment_id
                and row.kind == plan.kind
                and row.status in done
            ]
            if finished and all(row.updated_at and row.updated_at < moved_at for row in finished):
                cycle = appointment_cycle(plan.appointment_id, moved_at=moved_at)
                plan = dataclasses.replace(plan, cycle=cycle)
        out.append(plan)
    return out


@dataclass
class _Matched:
    """One case's planned rows matched against its existing ones: what to insert and update."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    summary: PlanSummary = field(default_factory=PlanSummary)


def _match(
    case_id: int,
    rows: Sequence[_Row],
    plans: Sequence[Planned],
    reach: Reach,
    policy: ReminderPolicy,
    now: datetime,
) -> _Matched:
    """The inserts and updates that bring one case's rows in line with its plan."""
    out = _Matched()
    summary = out.summary
    by_key = {(row.kind, row.cycle): row for row in rows}
    matched: set[int] = set()
    for plan in plans:
        row = by_key.get((plan.kind, plan.cycle))
        if row is None and plan.kind in DUE_KINDS:
            # The due date moved: the cycle's waiting row follows it instead of a new one.
            row = next(
                (
                    r
                    for r in rows
                    if r.kind == plan.kind and r.status in DUE and r.id not in matched
                ),
                None,
            )
        elif row is None and plan.appointment_id is not None:
            # Moved again before its reminder went: the waiting row follows the appointment.
            row = next(
                (
                    r
                    for r in rows
                    if r.appointment_id == plan.appointment_id
                    and r.kind == plan.kind
                    and r.status in DUE
                    and r.id not in matched
                ),
                None,
            )
        at = effective_send_at(plan, now=now, reach=reach)
        if row is None:
            out.inserts.append(_new_row(case_id, plan, at, now))
            if at is None:
                summary.too_late += 1
            else:
                summary.planned += 1
            continue
        matched.add(row.id)
        change = _replan(row, plan, at, now)
        if change is None:
            summary.unchanged += 1
        else:
            out.updates.append(change)
            if change["b_status"] == ReminderStatus.SKIPPED:
                summary.too_late += 1
            else:
                summary.updated += 1
    for row in rows:
        if row.id in matched or row.status not in DUE or row.kind in UNPLANNED_KINDS:
            continue
        reason = (
            "appointment_canceled"
            if row.kind == ReminderKind.APPOINTMENT
            else "due_date_changed"
            if row.kind in policy.offsets
            else "not_planned"
        )
        out.updates.append(_change(row, now, status=ReminderStatus.CANCELED, reason=reason))
        summary.canceled[reason] += 1
    return out


def _insert_ignoring_duplicates(session: Session):
    """INSERT that skips a row another planner inserted first (the unique case/kind/cycle)."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(Reminder.__table__).on_conflict_do_nothing(
        index_elements=["case_id", "kind", "cycle"]
    )


def _new_row(case_id: int, plan: Planned, at: datetime | None, now: datetime) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "kind": plan.kind,
        "cycle": plan.cycle,
        "appointment_id": plan.appointment_id,
        "send_at": at or plan.send_at,
        "status": ReminderStatus.SCHEDULED if at else ReminderStatus.SKIPPED,
        "reason": None if at else "too_late",
        "attempts": 0,
        "claim_token": 0,
        "created_at": now,
        "updated_at": now,
    }


def _change(
    row: _Row,
    now: datetime,
    *,
    status: ReminderStatus,
    reason: str | None,
    send_at: datetime | None = None,
    cycle: str | None = None,
    appointment_id: int | None = None,
) -> dict[str, Any]:
    return {
        "b_id": row.id,
        "b_cycle": cycle or row.cycle,
        "b_send_at": send_at or row.send_at,
        "b_status": status,
        "b_reason": reason,
        "b_appointment_id": appointment_id if appointment_id is not None else row.appointment_id,
        "b_updated_at": now,
    }


def _replan(row: _Row, plan: Planned, at: datetime | None, now: datetime) -> dict | None:
    """How an existing row changes under a new plan; None when it stays as it is."""
    if row.status not in PLANNABLE:
        return None  # sent, skipped, failed, or a job has it
    fields = {"cycle": plan.cycle, "appointment_id": plan.appointment_id}
    if at is None:
        return _change(row, now, status=ReminderStatus.SKIPPED, reason="too_late", **fields)
    moved = row.cycle != plan.cycle
    if moved or row.status == ReminderStatus.CANCELED:
        return _change(row, now, status=ReminderStatus.SCHEDULED, reason=None, send_at=at, **fields)
    if plan.send_at >= now:
        # The nominal time is still ahead: any difference means the date or settings changed.
        if row.send_at == plan.send_at and row.status == ReminderStatus.SCHEDULED:
            return None
        return _change(
            row, now, status=ReminderStatus.SCHEDULED, reason=None, send_at=plan.send_at, **fields
        )
    # Its time has come. A scheduled row waiting past the new time (an appointment brought
    # forward) is pulled in; a deferred one waits for the moment its sender chose.
    if row.status == ReminderStatus.SCHEDULED and row.send_at > at:
        return _change(row, now, status=ReminderStatus.SCHEDULED, reason=None, send_at=at, **fields)
    return None


# --- cancelling --------------------------------------------------------------------------------


def cancel_pending(*, session: Session, case_ids: Iterable[int], reason: str) -> int:
    """Cancel the cases' reminders not sent yet, including those a job holds; the caller commits."""
    ids = sorted(set(case_ids))
    if not ids:
        return 0
    table = Reminder.__table__
    result = session.execute(
        sa.update(table)
        .where(table.c.case_id.in_(ids), table.c.status.in_(CANCELABLE))
        .values(status=ReminderStatus.CANCELED, reason=reason[:64], updated_at=utcnow())
    )
    return result.rowcount or 0


def notify_canceled(*, session: Session, appointment: Appointment, now: datetime) -> bool:
    """Plan the text that tells the payer a canceled appointment is off, if a reminder of it
    went: they would otherwise come to it. True when one was planned; the caller commits.

    It goes like a reminder (the dispatch, the payer's window, every active phone on the case,
    never after STOP), once (one per appointment), and not once the appointment's time is past.
    """
    table = Reminder.__table__
    reminded = session.execute(
        sa.select(table.c.id)
        .where(
            table.c.appointment_id == appointment.id,
            table.c.kind == ReminderKind.APPOINTMENT,
            table.c.status == ReminderStatus.SENT,
        )
        .limit(1)
    ).first()
    if reminded is None or appointment.starts_at <= now:
        return False
    _plan_notice(session, appointment, ReminderKind.APPOINTMENT_CANCELED, now=now)
    return True


def _plan_notice(
    session: Session,
    appointment: Appointment,
    kind: ReminderKind,
    *,
    now: datetime,
    moved_at: datetime | None = None,
) -> None:
    """A notice about the appointment, due at once and sent like a reminder; once per cycle."""
    session.execute(
        _insert_ignoring_duplicates(session).values(
            case_id=appointment.case_id,
            kind=kind,
            cycle=appointment_cycle(appointment.id, moved_at=moved_at),
            appointment_id=appointment.id,
            send_at=now,
            status=ReminderStatus.SCHEDULED,
            attempts=0,
            claim_token=0,
            created_at=now,
            updated_at=now,
        )
    )


MOVED_NOTICE_MARGIN = timedelta(hours=1)
"""A moved appointment's reminder for its new time going this soon after the notice would is
notice enough: one text, not two at once."""


def notify_moved(*, session: Session, appointment: Appointment, now: datetime) -> bool:
    """Plan the text that tells the payer an appointment they were reminded of has a new time,
    after planning has re-planned its reminder (the caller moves and re-plans first, commits
    after). True when one was planned.

    Without it the payer keeps the old time until the day before the new one, and would come
    at the old time. No notice when the reminder for the new time goes about as soon anyway (a move
    to within a day), or when a notice not sent yet will give the new time.
    """
    table = Reminder.__table__
    about = sa.select(table.c.id).where(table.c.appointment_id == appointment.id)
    reminded = session.execute(
        about.where(
            table.c.kind.in_((ReminderKind.APPOINTMENT, ReminderKind.APPOINTMENT_MOVED)),
            table.c.status == ReminderStatus.SENT,
        ).limit(1)
    ).first()
    waiting = session.execute(
        about.where(
            table.c.kind == ReminderKind.APPOINTMENT_MOVED, table.c.status.in_(CANCELABLE)
        ).limit(1)
    ).first()
    if reminded is None or waiting is not None or appointment.starts_at <= now:
        return False
    phones = (
        session.execute(
            sa.select(Enrollment.phone).where(
                Enrollment.case_id == appointment.case_id,
                Enrollment.status == EnrollmentStatus.ACTIVE,
            )
        )
        .scalars()
        .all()
    )
    if not phones:
        return False
    case_tz = session.execute(
        sa.select(Case.timezone).where(Case.id == appointment.case_id)
    ).scalar_one()
    reach = case_reach(case_tz=case_tz, phones=phones, policy=current_policy())
    reminder_at = session.execute(
        sa.select(sa.func.min(table.c.send_at)).where(
            table.c.appointment_id == appointment.id,
            table.c.kind == ReminderKind.APPOINTMENT,
            table.c.status.in_(DUE),
        )
    ).scalar_one()
    if reminder_at is not None and reminder_at <= reach.next_allowed(now) + MOVED_NOTICE_MARGIN:
        return False
    _plan_notice(session, appointment, ReminderKind.APPOINTMENT_MOVED, now=now, moved_at=now)
    return True


# --- dispatching -------------------------------------------------------------------------------


@dataclass
class DispatchSummary:
    """What one dispatch found and did; sends are counted when jobs ran inline."""

    due: int = 0
    enqueued: int = 0
    jobs: int = 0
    recovered: int = 0
    deferred: int = 0
    sent: int = 0
    skipped: Counter = field(default_factory=Counter)
    dry_run: bool = False
    inline: bool = False
    invites_due: int = 0
    """Opt-in invitations held for quiet hours whose window has opened (a job sends them)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON and job results."""
        return {
            "due": self.due,
            "enqueued": self.enqueued,
            "jobs": self.jobs,
            "recovered": self.recovered,
            "deferred": self.deferred,
            "sent": self.sent,
            "skipped": dict(self.skipped),
            "dry_run": self.dry_run,
            "inline": self.inline,
            "invites_due": self.invites_due,
        }


def _wake_settled(session: Session, now: datetime) -> None:
    """Reminders held for a payment in flight whose case has none in flight any more (it went
    through, failed, or its approval lapsed) are due now: judged at once, not hours later."""
    table = Reminder.__table__
    payments = Payment.__table__
    still_flying = (
        sa.select(payments.c.id)
        .where(payments.c.case_id == table.c.case_id, payments.c.status.in_(IN_FLIGHT))
        .exists()
    )
    session.execute(
        sa.update(table)
        .where(
            table.c.status == ReminderStatus.DEFERRED,
            table.c.reason == "payment_in_flight",
            table.c.send_at > now,
            ~still_flying,
        )
        .values(send_at=now, updated_at=now)
    )


def dispatch_due(
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DispatchSummary:
    """Claim the reminders due by `now`, check them and enqueue send jobs in batches; enqueue
    a job for the opt-in invitations held for quiet hours whose window has opened.

    Safe to run twice or from two schedulers at once: a row is claimed by exactly one run, and
    each invitation by exactly one send.
    """
    clock = now  # a time given is passed on; else the invitation job reads its own clock
    now = now or utcnow()
    policy = current_policy()
    queue = current_app.extensions["queues"][SMS_QUEUE]
    summary = DispatchSummary(dry_run=dry_run, inline=not queue.is_async)
    dispatched: list[int] = []
    with session_scope() as session:
        summary.recovered = _recover_stale(session, now, dry_run=dry_run)
        if not dry_run:
            _wake_settled(session, now)
        session.commit()
        total = session.execute(
            sa.select(sa.func.count())
            .select_from(Reminder)
            .where(Reminder.status.in_(DUE), Reminder.send_at <= now)
        ).scalar_one()
        summary.due = total
        after_id = done = 0
        while True:
            if dry_run:
                claimed = _peek(session, now, after_id)
                after_id = claimed[-1][0] if claimed else after_id
            else:
                claimed = _claim(session, now)
                session.commit()
            if not claimed:
                break
            ready = _check_claimed(session, claimed, policy, now, summary, dry_run=dry_run)
            session.commit()
            if ready and not dry_run:
                summary.jobs += _enqueue(queue, ready)
                dispatched.extend(reminder_id for reminder_id, _ in ready)
            summary.enqueued += len(ready)
            done += len(claimed)
            if progress:
                progress(min(done, total), total)
            if done >= total and not dry_run:
                # What fell due since the count (or a row a send job put back as due, judging
                # by a clock behind this run's `now`) waits for the next dispatch: a run ends.
                break
    if summary.inline and dispatched:
        _count_outcomes(dispatched, summary)
    with session_scope() as session:
        summary.invites_due = held_invites_due(session=session, now=now)
    if summary.invites_due and not dry_run:
        _enqueue_held_invites(queue, now, clock)
    return summary


def _enqueue_held_invites(queue, now: datetime, clock: datetime | None) -> None:
    """One job sends the invitations held for quiet hours; each is claimed, so a second is idle.

    It judges quiet hours again by its own clock when it runs (`clock` given, by that one).
    """
    queue.enqueue(
        "jobs.tasks.send_held_invites",
        clock,
        job_id=f"invites_{now:%Y%m%dT%H%M%S}",
        job_timeout=SEND_JOB_TIMEOUT,
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
        description="send opt-in invitations held for quiet hours",
    )


def _recover_stale(session: Session, now: datetime, *, dry_run: bool) -> int:
    """Rows whose job died or vanished go back to the schedule, to be claimed again."""
    table = Reminder.__table__
    stale = sa.or_(
        sa.and_(table.c.status == ReminderStatus.QUEUED, table.c.updated_at < now - QUEUED_TIMEOUT),
        sa.and_(
            table.c.status == ReminderStatus.SENDING, table.c.updated_at < now - SENDING_TIMEOUT
        ),
    )
    if dry_run:
        return session.execute(
            sa.select(sa.func.count()).select_from(table).where(stale)
        ).scalar_one()
    result = session.execute(
        sa.update(table)
        .where(stale)
        .values(status=ReminderStatus.SCHEDULED, reason="recovered", updated_at=now)
    )
    if result.rowcount:
        log.warning("re-queued %d reminders whose send job was lost", result.rowcount)
    return result.rowcount or 0


def _claim(session: Session, now: datetime) -> list[tuple[int, int, int]]:
    """Atomically take up to CLAIM_CHUNK due rows: (id, token, case_id) each."""
    table = Reminder.__table__
    due = (
        sa.select(table.c.id)
        .where(table.c.status.in_(DUE), table.c.send_at <= now)
        .order_by(table.c.send_at, table.c.id)
        .limit(CLAIM_CHUNK)
    )
    if session.get_bind().dialect.name == "postgresql":
        # A second dispatcher skips the rows this one is claiming rather than waiting for them.
        due = due.with_for_update(skip_locked=True)
    result = session.execute(
        sa.update(table)
        # SQLite has one writer at a time, and the status test is repeated under its lock.
        .where(table.c.id.in_(due.scalar_subquery()), table.c.status.in_(DUE))
        .values(status=ReminderStatus.QUEUED, claim_token=table.c.claim_token + 1, updated_at=now)
        .returning(table.c.id, table.c.claim_token, table.c.case_id)
    )
    return sorted(tuple(row) for row in result)


def _peek(session: Session, now: datetime, after_id: int) -> list[tuple[int, int, int]]:
    """What `_claim` would take, without taking it (dry runs)."""
    table = Reminder.__table__
    rows = session.execute(
        sa.select(table.c.id, table.c.claim_token + 1, table.c.case_id)
        .where(table.c.status.in_(DUE), table.c.send_at <= now, table.c.id > after_id)
        .order_by(table.c.id)
        .limit(CLAIM_CHUNK)
    )
    return [tuple(row) for row in rows]


def _check_claimed(
    session: Session,
    claimed: Sequence[tuple[int, int, int]],
    policy: ReminderPolicy,
    now: datetime,
    summary: DispatchSummary,
    *,
    dry_run: bool,
) -> list[tuple[int, int]]:
    """Skip rows of closed or unenrolled cases, defer rows in quiet hours; return the rest."""
    case_ids = sorted({case_id for _, _, case_id in claimed})
    cases, zones = {}, {}
    for case_id, status, zone in session.execute(
        sa.select(Case.id, Case.status, Case.timezone).where(Case.id.in_(case_ids))
    ):
        cases[case_id], zones[case_id] = status, zone
    phones: dict[int, list[str]] = defaultdict(list)
    for case_id, phone in session.execute(
        sa.select(Enrollment.case_id, Enrollment.phone)
        .where(Enrollment.case_id.in_(case_ids), Enrollment.status == EnrollmentStatus.ACTIVE)
        .order_by(Enrollment.id)
    ):
        phones[case_id].append(phone)
    ready: list[tuple[int, int]] = []
    changes: list[dict[str, Any]] = []
    for reminder_id, token, case_id in claimed:
        change = {"b_id": reminder_id, "b_token": token, "b_send_at": None, "b_updated_at": now}
        if cases.get(case_id) != CaseStatus.OPEN:
            changes.append(
                {**change, "b_status": ReminderStatus.SKIPPED, "b_reason": "case_closed"}
            )
            summary.skipped["case_closed"] += 1
            continue
        if not phones.get(case_id):
            changes.append(
                {**change, "b_status": ReminderStatus.SKIPPED, "b_reason": "not_enrolled"}
            )
            summary.skipped["not_enrolled"] += 1
            continue
        # Judged by the case's clock and its phones' common window; the job checks each phone.
        reach = case_reach(case_tz=zones.get(case_id), phones=phones[case_id], policy=policy)
        if not reach.allows(now):
            later = reach.next_allowed(now)
            changes.append(
                {
                    **change,
                    "b_status": ReminderStatus.DEFERRED,
                    "b_reason": "quiet_hours",
                    "b_send_at": later,
                }
            )
            summary.deferred += 1
            continue
        ready.append((reminder_id, token))
    if changes and not dry_run:
        table = Reminder.__table__
        session.execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                table.c.claim_token == sa.bindparam("b_token"),
                table.c.status == ReminderStatus.QUEUED,
            )
            .values(
                status=sa.bindparam("b_status"),
                reason=sa.bindparam("b_reason"),
                send_at=sa.func.coalesce(
                    sa.bindparam("b_send_at", type_=Reminder.__table__.c.send_at.type),
                    table.c.send_at,
                ),
                updated_at=sa.bindparam("b_updated_at"),
            ),
            changes,
        )
    return ready


def _enqueue(queue, ready: Sequence[tuple[int, int]]) -> int:
    """One send job per SEND_BATCH claims, all in one round trip; return the number of jobs."""
    from rq import Queue

    batches = [list(ready[i : i + SEND_BATCH]) for i in range(0, len(ready), SEND_BATCH)]
    jobs = [
        Queue.prepare_data(
            "jobs.tasks.send_reminders",
            args=(batch,),
            # The first claim names the batch: a (row, token) pair is only ever claimed once.
            job_id=f"rem_{batch[0][0]}_{batch[0][1]}",
            timeout=SEND_JOB_TIMEOUT,
            result_ttl=0,
            failure_ttl=7 * 24 * 3600,
            description=f"send {len(batch)} reminders",
        )
        for batch in batches
    ]
    if queue.is_async:
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()
    else:
        queue.enqueue_many(jobs)
    return len(jobs)


def _count_outcomes(reminder_ids: Sequence[int], summary: DispatchSummary) -> None:
    """Read back what inline jobs did with the rows this dispatch enqueued."""
    with session_scope() as session:
        for start in range(0, len(reminder_ids), CLAIM_CHUNK):
            chunk = reminder_ids[start : start + CLAIM_CHUNK]
            for status, reason, count in session.execute(
                sa.select(Reminder.status, Reminder.reason, sa.func.count())
                .where(Reminder.id.in_(chunk))
                .group_by(Reminder.status, Reminder.reason)
            ):
                if status == ReminderStatus.SENT:
                    summary.sent += count
                elif status == ReminderStatus.DEFERRED:
                    summary.deferred += count
                elif status in (
                    ReminderStatus.SKIPPED,
                    ReminderStatus.FAILED,
                    ReminderStatus.CANCELED,
                ):
                    summary.skipped[reason or status] += count
                elif status == ReminderStatus.SCHEDULED:
                    # Back with the planner: its due date or appointment moved since planning.
                    summary.skipped["rescheduled"] += count
                else:
                    summary.skipped["job_failed"] += count  # left to the stale-job recovery


# --- sending -----------------------------------------------------------------------------------


@dataclass
class SendSummary:
    """What one send job did with its batch."""

    reminders: int = 0
    sent: int = 0
    texts: int = 0
    deferred: int = 0
    retrying: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for job results."""
        return {
            "reminders": self.reminders,
            "sent": self.sent,
            "texts": self.texts,
            "deferred": self.deferred,
            "retrying": self.retrying,
            "skipped": dict(self.skipped),
        }


@dataclass
class _Tally:
    """How each phone of one reminder came out."""

    sent_before: bool = False
    sent_now: int = 0
    unknown: int = 0
    blocked: Counter = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    deferred_until: list[datetime] = field(default_factory=list)
    retry_at: list[datetime] = field(default_factory=list)
    retry_codes: list[str] = field(default_factory=list)
    canceled: bool = False
    tried: bool = False
    """Twilio was asked to send one of its texts: the claim counts as an attempt."""


@dataclass(frozen=True)
class _Final:
    """A reminder decided without sending anything (for now, when deferred to `send_at`)."""

    status: ReminderStatus
    reason: str
    send_at: datetime | None = None


@dataclass
class _Delivery:
    """One text to send: which reminder, to whom, saying what."""

    row: _Row
    case_id: int
    enrollment_id: int
    phone: str
    body: str
    reach: Reach
    turn_id: int | None = None


@dataclass
class _Context:
    """Everything a batch's checks read, loaded in a few statements."""

    rows: dict[int, _Row]
    cases: dict[int, Any]
    enrollments: dict[int, list[Any]]
    opted_out_cases: set[int]
    blocked_phones: set[str]
    cards: dict[int, str]
    payments: dict[int, list[tuple[datetime, int]]]
    settled: dict[int, list[tuple[datetime, int]]]
    in_flight: dict[int, int]
    texting_since: dict[int, datetime]
    appointments: dict[int, Any]
    turns: dict[tuple[int, str], Any]


def send_reminder(
    *, reminder_id: int, token: int, clock: Callable[[], datetime] = utcnow
) -> SendSummary:
    """Send one claimed reminder (see `send_reminders`)."""
    return send_reminders(claims=[(reminder_id, token)], clock=clock)


def send_reminders(
    *, claims: Sequence[Sequence[int]], clock: Callable[[], datetime] = utcnow
) -> SendSummary:
    """Send a batch of claimed reminders, re-checking each one and pacing every text.

    `claims` are (reminder id, token) pairs from `dispatch_due`; a pair whose row was claimed
    again since, sent, or cancelled is left alone, so running a job twice sends nothing twice.
    `clock` is read before every text, so quiet hours hold however long the batch takes.
    """
    summary = SendSummary()
    policy = current_policy()
    with session_scope() as session:
        owned = _take(session, claims, clock())
        session.commit()
        if not owned:
            return summary
        summary.reminders = len(owned)
        context = _load(session, owned)
        now = clock()
        tallies: dict[int, _Tally] = {}
        deliveries: list[_Delivery] = []
        finished: dict[int, _Final] = {}
        for reminder_id in owned:
            row = context.rows[reminder_id]
            verdict = _judge(session, row, context, policy, now)
            if isinstance(verdict, _Final):
                finished[reminder_id] = verdict
                continue
            tallies[reminder_id], texts = verdict
            deliveries.extend(texts)
        session.commit()
        _deliver(session, deliveries, tallies, summary, clock)
        _finish(session, owned, context, tallies, finished, summary, clock())
    return summary


def _take(session: Session, claims: Sequence[Sequence[int]], now: datetime) -> list[int]:
    """Move the claimed rows to `sending` if the claim still holds; return the ids taken."""
    table = Reminder.__table__
    by_token: dict[int, list[int]] = defaultdict(list)
    for reminder_id, token in claims:
        by_token[int(token)].append(int(reminder_id))
    taken: list[int] = []
    for token, ids in by_token.items():
        result = session.execute(
            sa.update(table)
            .where(
                table.c.id.in_(ids),
                table.c.claim_token == token,
                table.c.status == ReminderStatus.QUEUED,
            )
            .values(status=ReminderStatus.SENDING, updated_at=now)
            .returning(table.c.id)
        )
        taken.extend(result.scalars())
    return sorted(taken)


def _load(session: Session, ids: Sequence[int]) -> _Context:
    rows = {
        row[0]: _Row(*row)
        for row in session.execute(sa.select(*_ROW_COLUMNS).where(Reminder.id.in_(ids)))
    }
    case_ids = sorted({row.case_id for row in rows.values()})
    cases = {
        case.id: case
        for case in session.execute(
            sa.select(
                Case.id,
                Case.case_number,
                Case.status,
                Case.timezone,
                Case.next_due_date,
                Case.amount_due_cents,
                Case.balance_cents,
            ).where(Case.id.in_(case_ids))
        )
    }
    enrollments: dict[int, list[Any]] = defaultdict(list)
    texting_since: dict[int, datetime] = {}
    opted_out: set[int] = set()
    for enrollment in session.execute(
        sa.select(
            Enrollment.id,
            Enrollment.case_id,
            Enrollment.phone,
            Enrollment.language,
            Enrollment.status,
            sa.func.coalesce(Enrollment.confirmed_at, Enrollment.created_at).label("since"),
        )
        .where(Enrollment.case_id.in_(case_ids))
        .order_by(Enrollment.id)
    ):
        if enrollment.status == EnrollmentStatus.ACTIVE:
            enrollments[enrollment.case_id].append(enrollment)
            earlier = texting_since.get(enrollment.case_id)
            if earlier is None or enrollment.since < earlier:
                texting_since[enrollment.case_id] = enrollment.since
        elif enrollment.status == EnrollmentStatus.OPTED_OUT:
            opted_out.add(enrollment.case_id)
    phones = sorted({e.phone for found in enrollments.values() for e in found})
    blocked_phones = set(
        session.execute(
            sa.select(Enrollment.phone).where(
                Enrollment.phone.in_(phones),
                Enrollment.status.in_((EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE)),
            )
        ).scalars()
    )
    cards: dict[int, str] = {}
    for case_id, last4 in session.execute(
        sa.select(CardOnFile.case_id, CardOnFile.last4)
        .where(CardOnFile.case_id.in_(case_ids), CardOnFile.active.is_(True))
        .order_by(CardOnFile.id)
    ):
        cards[case_id] = last4  # the newest active card wins
    earliest = min(
        (
            previous_due_date(previous_due_date(case.next_due_date))
            for case in cases.values()
            if case.next_due_date is not None
        ),
        default=None,
    )
    payments: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    settled: dict[int, list[tuple[datetime, int]]] = defaultdict(list)  # none in flight
    in_flight: dict[int, int] = defaultdict(int)
    if earliest is not None:
        # The previous cycle's too. A day's margin covers every zone; each case's own cycle
        # starts are applied later.
        since = datetime.combine(earliest - timedelta(days=1), time(0), tzinfo=UTC)
        for case_id, created_at, status, amount, net in session.execute(
            sa.select(
                Payment.case_id,
                Payment.created_at,
                Payment.status,
                Payment.amount_cents,
                Payment.amount_cents - Payment.refunded_cents,
            ).where(
                Payment.case_id.in_(case_ids),
                Payment.status.in_(COUNTED),
                Payment.created_at >= since,
            )
        ):
            payments[case_id].append((created_at, net))
            if status in IN_FLIGHT:
                in_flight[case_id] += amount
            else:
                settled[case_id].append((created_at, net))
    appointment_ids = sorted({r.appointment_id for r in rows.values() if r.appointment_id})
    appointments = {
        appointment.id: appointment
        for appointment in session.execute(
            sa.select(
                Appointment.id,
                Appointment.kind,
                Appointment.starts_at,
                Appointment.location,
                Appointment.video_link,
                Appointment.status,
            ).where(Appointment.id.in_(appointment_ids or [0]))
        )
    }
    turns = {
        (turn.reminder_id, turn.phone): turn
        for turn in session.execute(
            sa.select(
                ConversationTurn.id,
                ConversationTurn.reminder_id,
                ConversationTurn.phone,
                ConversationTurn.provider_message_id,
                ConversationTurn.delivery_status,
                ConversationTurn.error_code,
            ).where(
                ConversationTurn.reminder_id.in_(ids),
                ConversationTurn.direction == Direction.OUTBOUND,
            )
        )
    }
    return _Context(
        rows,
        cases,
        enrollments,
        opted_out,
        blocked_phones,
        cards,
        payments,
        settled,
        in_flight,
        texting_since,
        appointments,
        turns,
    )


_NOTICE_NEEDS = {
    ReminderKind.APPOINTMENT_CANCELED: (AppointmentStatus.CANCELED, "appointment_not_canceled"),
    ReminderKind.APPOINTMENT_MOVED: (AppointmentStatus.SCHEDULED, "appointment_canceled"),
}
"""A notice's appointment status to be sent, and the reason it is skipped without it."""


def _judge(
    session: Session, row: _Row, context: _Context, policy: ReminderPolicy, now: datetime
) -> _Final | tuple[_Tally, list[_Delivery]]:
    """Decide a reminder just before sending: a final (status, reason), or texts to send."""
    case = context.cases.get(row.case_id)
    if case is None or case.status != CaseStatus.OPEN:
        return _Final(ReminderStatus.SKIPPED, "case_closed")
    enrollments = context.enrollments.get(row.case_id, [])
    if not enrollments:
        opted_out = row.case_id in context.opted_out_cases
        return _Final(ReminderStatus.SKIPPED, "opted_out" if opted_out else "not_enrolled")
    reach = case_reach(case_tz=case.timezone, phones=[e.phone for e in enrollments], policy=policy)
    appointment_info = None
    amount = 0
    if row.kind in _NOTICE_NEEDS:
        # A cancellation notice needs the appointment canceled still; a moved one, scheduled,
        # and it gives the time it has now, moved again since or not.
        needs, otherwise = _NOTICE_NEEDS[row.kind]
        appointment = context.appointments.get(row.appointment_id)
        if appointment is None or appointment.status != needs:
            return _Final(ReminderStatus.SKIPPED, otherwise)
        if appointment.starts_at <= now:
            return _Final(ReminderStatus.SKIPPED, "too_late")
        appointment_info = AppointmentInfo(
            kind=str(appointment.kind), starts_at=appointment.starts_at
        )
    elif row.kind == ReminderKind.APPOINTMENT:
        appointment = context.appointments.get(row.appointment_id)
        if appointment is None or appointment.status != AppointmentStatus.SCHEDULED:
            return _Final(ReminderStatus.SKIPPED, "appointment_canceled")
        if appointment.starts_at <= now:
            return _Final(ReminderStatus.SKIPPED, "too_late")
        nominal = appointment_send_at(appointment.starts_at, reach)
        if nominal > now + timedelta(minutes=5):
            # The appointment moved later since the row was planned: plan it again.
            return _replan_now(session, row, now)
        appointment_info = AppointmentInfo(
            kind=str(appointment.kind),
            starts_at=appointment.starts_at,
            location=appointment.location,
            video_link=appointment.video_link,
        )
    else:
        due = case.next_due_date
        if due is None or row.cycle != due.isoformat():
            # The due date moved (or went) since planning: re-plan rather than say the wrong date.
            return _replan_now(session, row, now)
        stale = expires_at(
            row.kind, zone=reach.zone, due_date=due, offset_days=policy.offsets.get(row.kind, 0)
        )
        if now >= stale:
            return _Final(ReminderStatus.SKIPPED, "too_late")
        # A payment still in flight counts as paid, as BAL and PAY count it (not yet taken off
        # the balance). A cycle only such a payment covers is not closed as paid: the reminder
        # is held and judged again, skipped once the payment succeeds, sent if it fails.
        in_flight = context.in_flight.get(row.case_id, 0)
        amount = _cycle_owes(
            case,
            payments=context.payments.get(row.case_id, []),
            balance_cents=case.balance_cents - in_flight,
            zone=reach.zone,
            texting_since=context.texting_since[row.case_id],
        )
        if amount == 0:
            if in_flight and _cycle_owes(
                case,
                payments=context.settled.get(row.case_id, []),
                balance_cents=case.balance_cents,
                zone=reach.zone,
                texting_since=context.texting_since[row.case_id],
            ):
                later = reach.next_allowed(now + IN_FLIGHT_RECHECK)
                return _Final(ReminderStatus.DEFERRED, "payment_in_flight", send_at=later)
            return _Final(ReminderStatus.SKIPPED, "paid")

    tally = _Tally()
    texts: list[_Delivery] = []
    for enrollment in enrollments:
        turn = context.turns.get((row.id, enrollment.phone))
        if turn is not None and turn.provider_message_id:
            tally.sent_before = True
            continue
        if turn is not None and turn.delivery_status in (CLAIMED, UNKNOWN):
            # A run died between claiming this text and recording Twilio's answer: it may have
            # gone, so it is not sent again.
            tally.unknown += 1
            if turn.delivery_status == CLAIMED:
                session.execute(
                    sa.update(ConversationTurn.__table__)
                    .where(ConversationTurn.__table__.c.id == turn.id)
                    .values(delivery_status=UNKNOWN, updated_at=now)
                )
            continue
        if turn is not None and turn.delivery_status != "retry":
            tally.failed.append(f"error:{turn.error_code}")
            continue
        if enrollment.phone in context.blocked_phones:
            tally.blocked["opted_out"] += 1
            continue
        phone_at = phone_reach(case_tz=case.timezone, phone=enrollment.phone, policy=policy)
        body = reminder_text(
            kind=row.kind,
            language=enrollment.language,
            policy=policy,
            case_number=case.case_number,
            zone=phone_at.zone,
            amount_cents=amount,
            due_date=case.next_due_date,
            card_last4=context.cards.get(row.case_id),
            appointment=appointment_info,
        )
        texts.append(
            _Delivery(
                row=row,
                case_id=row.case_id,
                enrollment_id=enrollment.id,
                phone=enrollment.phone,
                body=body,
                reach=phone_at,
                turn_id=turn.id if turn is not None else None,
            )
        )
    return tally, texts


def _cycle_owes(
    case: Any,
    *,
    payments: Sequence[tuple[datetime, int]],
    balance_cents: int,
    zone: ZoneInfo,
    texting_since: datetime,
) -> int:
    """What the case's cycle due next still asks for, given these payments (billing.cycles)."""
    paid_in_cycle, paid_before = paid_in_cycles(
        payments, due_date=case.next_due_date, zone=zone, texting_since=texting_since
    )
    left = paid_toward_cycle(
        amount_due_cents=case.amount_due_cents,
        balance_cents=balance_cents,
        paid_in_cycle_cents=paid_in_cycle,
        paid_in_previous_cycle_cents=paid_before,
    )
    return still_owed(
        amount_due_cents=case.amount_due_cents,
        balance_cents=balance_cents,
        paid_toward_cycle_cents=left,
    )


def _replan_now(session: Session, row: _Row, now: datetime) -> _Final:
    """Hand a row back to planning, which moves or cancels it; the job sends nothing."""
    table = Reminder.__table__
    session.execute(
        sa.update(table)
        .where(
            table.c.id == row.id,
            table.c.status == ReminderStatus.SENDING,
            table.c.claim_token == row.token,
        )
        .values(status=ReminderStatus.SCHEDULED, updated_at=now)
    )
    plan_case(session=session, case_id=row.case_id, now=now)
    return _Final(ReminderStatus.SCHEDULED, "rescheduled")


_TURNS = ConversationTurn.__table__
_BLOCKED = (EnrollmentStatus.OPTED_OUT, EnrollmentStatus.UNDELIVERABLE)
_TIME = _TURNS.c.created_at.type


def _still_wanted():
    """SQL: the job's claim on the reminder still holds, and the phone has not opted out meanwhile.

    The claim is the row's status and its token: a row recovered from a job thought dead and
    claimed again is `sending` once more, and the old job, if it was only slow, must not send
    too. On PostgreSQL the row is read FOR SHARE, so a recovery, a new claim or a STOP that
    changes it waits for this claim to commit, and the job it enqueues then sees the claim.
    """
    reminders = Reminder.__table__
    enrollments = Enrollment.__table__
    held = sa.exists(
        sa.select(reminders.c.id)
        .where(
            reminders.c.id == sa.bindparam("b_reminder_id"),
            reminders.c.status == ReminderStatus.SENDING,
            reminders.c.claim_token == sa.bindparam("b_token", type_=sa.Integer),
        )
        .with_for_update(read=True)
    )
    stopped = sa.exists().where(
        enrollments.c.phone == sa.bindparam("b_phone"), enrollments.c.status.in_(_BLOCKED)
    )
    return sa.and_(held, ~stopped)


# Check and claim in one statement: the claim exists only if the text is still wanted.
_CLAIM_NEW = (
    sa.insert(_TURNS)
    .from_select(
        [
            "case_id",
            "enrollment_id",
            "phone",
            "direction",
            "body",
            "delivery_status",
            "intent",
            "reminder_id",
            "created_at",
            "updated_at",
        ],
        sa.select(
            sa.bindparam("b_case_id", type_=sa.Integer),
            sa.bindparam("b_enrollment_id", type_=sa.Integer),
            sa.bindparam("b_phone", type_=sa.String),
            sa.bindparam("b_direction", type_=sa.String),
            sa.bindparam("b_body", type_=sa.Text),
            sa.bindparam("b_delivery_status", type_=sa.String),
            sa.bindparam("b_intent", type_=sa.String),
            sa.bindparam("b_reminder_id", type_=sa.Integer),
            sa.bindparam("b_now", type_=_TIME),
            sa.bindparam("b_now", type_=_TIME),
        ).where(_still_wanted()),
    )
    .returning(_TURNS.c.id)
)
_CLAIM_AGAIN = (
    sa.update(_TURNS)
    .where(_TURNS.c.id == sa.bindparam("b_turn_id"), _still_wanted())
    .values(
        delivery_status=CLAIMED,
        body=sa.bindparam("b_body"),
        error_code=None,
        updated_at=sa.bindparam("b_now", type_=_TIME),
    )
    .returning(_TURNS.c.id)
)
# Twilio's answer to the previous text; a NULL id (no previous text) matches nothing.
_RECORD = (
    sa.update(_TURNS)
    .where(_TURNS.c.id == sa.bindparam("r_turn_id", type_=sa.Integer))
    .values(
        provider_message_id=sa.bindparam("r_sid", type_=sa.String),
        delivery_status=sa.bindparam("r_delivery_status", type_=sa.String),
        error_code=sa.bindparam("r_error_code", type_=sa.Integer),
        updated_at=sa.bindparam("r_at", type_=_TIME),
    )
)
# PostgreSQL: record the last answer and claim the next text in one autocommitted statement,
# one round trip per text.
_ANSWERED = _RECORD.returning(_TURNS.c.id).cte("answered")
_RECORD_AND_CLAIM_NEW = _CLAIM_NEW.add_cte(_ANSWERED)
_RECORD_AND_CLAIM_AGAIN = _CLAIM_AGAIN.add_cte(_ANSWERED)
_NO_ANSWER = {
    "r_turn_id": None,
    "r_sid": None,
    "r_delivery_status": None,
    "r_error_code": None,
    "r_at": None,
}
_HELD = sa.select(Reminder.__table__.c.status, Reminder.__table__.c.claim_token).where(
    Reminder.__table__.c.id == sa.bindparam("b_reminder_id")
)
_LAZY_COMMITS = sa.text("SET synchronous_commit TO OFF")
_DURABLE_COMMITS = sa.text("RESET synchronous_commit")


class _Claimer:
    """Writes claims and answers on a connection of its own, the fastest way each database can.

    PostgreSQL: one autocommitted statement per text, committed without waiting for the WAL
    flush (2 ms on the benchmark machine, a third of a send). A killed worker loses nothing, as
    the server has the commit; only a crash of the database server itself within ~0.6 s
    (3 x wal_writer_delay) could forget a claim and let that one text go twice. It is the trade
    db.py makes for SQLite with synchronous=NORMAL.
    SQLite: the answer and the next claim in one transaction.
    """

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        self.postgres = self._engine.dialect.name == "postgresql"
        self._connection: sa.Connection | None = None

    def __enter__(self) -> _Claimer:
        connection = self._engine.connect()
        if self.postgres:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(_LAZY_COMMITS)
        self._connection = connection
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._connection is not None
        try:
            if self.postgres:
                self._connection.execute(_DURABLE_COMMITS)
            else:
                self._connection.commit()
        finally:
            self._connection.close()

    def claim(self, delivery: _Delivery, now: datetime, answer: dict | None) -> int | None:
        """Save the last answer and claim this text; None when the text is no longer wanted."""
        assert self._connection is not None
        params: dict[str, Any] = {
            "b_reminder_id": delivery.row.id,
            "b_token": delivery.row.token,
            "b_phone": delivery.phone,
            "b_now": now,
            "b_body": delivery.body,
        }
        if delivery.turn_id is not None:
            params["b_turn_id"] = delivery.turn_id
        else:
            params.update(
                b_case_id=delivery.case_id,
                b_enrollment_id=delivery.enrollment_id,
                b_direction=Direction.OUTBOUND,
                b_delivery_status=CLAIMED,
                b_intent=f"reminder_{delivery.row.kind}"[:24],
            )
        again = delivery.turn_id is not None
        if self.postgres:
            statement = _RECORD_AND_CLAIM_AGAIN if again else _RECORD_AND_CLAIM_NEW
            params.update(answer or _NO_ANSWER)
            return self._connection.execute(statement, params).scalar_one_or_none()
        if answer is not None:
            self._connection.execute(_RECORD, answer)
        turn_id = self._connection.execute(
            _CLAIM_AGAIN if again else _CLAIM_NEW, params
        ).scalar_one_or_none()
        self._connection.commit()
        return turn_id

    def record(self, answer: dict) -> None:
        """Save an answer with nothing to claim after it."""
        assert self._connection is not None
        self._connection.execute(_RECORD, answer)
        if not self.postgres:
            self._connection.commit()

    def held(self, row: _Row) -> bool:
        """Whether the job still holds the reminder (not cancelled or claimed again meanwhile)."""
        assert self._connection is not None
        found = self._connection.execute(_HELD, {"b_reminder_id": row.id}).first()
        if not self.postgres:
            self._connection.commit()
        return found is not None and tuple(found) == (ReminderStatus.SENDING, row.token)


def _deliver(
    session: Session,
    deliveries: Sequence[_Delivery],
    tallies: dict[int, _Tally],
    summary: SendSummary,
    clock: Callable[[], datetime],
) -> None:
    """Send the batch's texts over SEND_LANES threads, each one text at a time."""
    if not deliveries:
        return
    config = current_app.config
    redis = current_app.extensions["redis"]
    engine = session.get_bind()
    gateway = current_app.extensions["sms"]
    callback = status_callback_url()
    # A number's texts stay in one lane, in order: after a permanent error the claim check
    # stops the number's later texts. Each lane keeps its own tallies, merged afterwards.
    lanes: list[list[_Delivery]] = [[] for _ in range(SEND_LANES)]
    order: dict[str, int] = {}
    for delivery in deliveries:
        lane = order.setdefault(delivery.phone, len(order) % SEND_LANES)
        lanes[lane].append(delivery)
    lanes = [found for found in lanes if found]
    results: list[tuple[int, list[tuple[int, str]]]] = []
    errors: list[BaseException] = []
    lane_tallies: list[dict[int, _Tally]] = []

    def run(texts: list[_Delivery]) -> None:
        own: dict[int, _Tally] = defaultdict(_Tally)
        lane_tallies.append(own)
        try:
            lane = _Lane(
                engine=engine, gateway=gateway, callback=callback, clock=clock, tallies=own
            )
            pacer = Pacer(redis, rate_per_second=config["SMS_RATE_PER_SECOND"])
            results.append(lane.send(texts, pacer))
        except BaseException as exc:  # re-raised in the job's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(texts,)) for texts in lanes[1:]]
    for thread in threads:
        thread.start()
    run(lanes[0])
    for thread in threads:
        thread.join()
    for own in lane_tallies:
        for reminder_id, part in own.items():
            _merge(tallies[reminder_id], part)
    if errors:
        raise errors[0]
    summary.texts += sum(texts for texts, _ in results)
    _apply_early_reports(session, [pair for _, accepted in results for pair in accepted])


def _merge(tally: _Tally, part: _Tally) -> None:
    tally.sent_now += part.sent_now
    tally.unknown += part.unknown
    tally.blocked.update(part.blocked)
    tally.failed.extend(part.failed)
    tally.deferred_until.extend(part.deferred_until)
    tally.retry_at.extend(part.retry_at)
    tally.retry_codes.extend(part.retry_codes)
    tally.canceled = tally.canceled or part.canceled
    tally.tried = tally.tried or part.tried


@dataclass
class _Lane:
    """One thread's share of a batch: pace, check and claim, send, record, one text at a time."""

    engine: sa.Engine
    gateway: Any
    callback: str | None
    clock: Callable[[], datetime]
    tallies: dict[int, _Tally]

    def send(self, deliveries: Sequence[_Delivery], pacer: Pacer) -> tuple[int, list]:
        """Send these texts in order; return (texts accepted, [(turn id, sid)])."""
        answer: dict[str, Any] | None = None  # the last text's answer, saved with the next claim
        accepted: list[tuple[int, str]] = []
        with _Claimer(self.engine) as claimer:
            try:
                for delivery in deliveries:
                    tally = self.tallies[delivery.row.id]
                    if tally.canceled:
                        continue
                    pacer.wait()
                    now = self.clock()
                    reach = delivery.reach
                    if not reach.allows(now):
                        tally.deferred_until.append(reach.next_allowed(now))
                        continue
                    # The claim (with the previous answer) is on disk before Twilio is called.
                    turn_id = claimer.claim(delivery, now, answer)
                    answer = None
                    if turn_id is None:
                        if claimer.held(delivery.row):
                            tally.blocked["opted_out"] += 1
                        else:
                            tally.canceled = True  # STOP or staff cancelled it meanwhile
                        continue
                    tally.tried = True
                    result = self.gateway.send(
                        to=delivery.phone, body=delivery.body, status_callback=self.callback
                    )
                    answer = {
                        "r_turn_id": turn_id,
                        "r_sid": result.sid,
                        "r_error_code": result.error_code,
                        "r_at": self.clock(),
                    }
                    if result.ok:
                        answer["r_delivery_status"] = result.status or "sent"
                        accepted.append((turn_id, result.sid))
                        tally.sent_now += 1
                        # Saving the answer with the next claim spares a round trip when that
                        # claim comes at once; otherwise it is saved now, so a crash while
                        # waiting leaves no doubt about this text.
                        ahead = pacer.time_to_next()
                        if ahead is None or ahead > FOLD_ANSWER_WITHIN:
                            claimer.record(answer)
                            answer = None
                        continue
                    answer["r_delivery_status"] = _unsent_status(result)
                    claimer.record(answer)
                    answer = None
                    self._failed(delivery, result, tally, pacer, now)
            finally:
                # Whatever stopped the loop, the last answer from Twilio is kept.
                if answer is not None:
                    claimer.record(answer)
        return len(accepted), accepted

    def _failed(self, delivery: _Delivery, result, tally: _Tally, pacer: Pacer, now) -> None:
        log.warning(
            "reminder %s to ***%s failed: %s %s",
            delivery.row.id,
            delivery.phone[-4:],
            result.error_code,
            result.failure,
        )
        reach = delivery.reach
        if result.outcome_unknown:
            # Twilio may have taken it (a timeout, a dropped connection, a 5xx): as after a
            # crash, the text is not sent again and the reminder is left for staff to see.
            tally.unknown += 1
            return
        if result.retryable:
            tally.retry_codes.append(str(result.error_code or "network"))
            retry_at = now + retry_delay(delivery.row.attempts + 1)
            tally.retry_at.append(reach.next_allowed(retry_at))
            if result.error_code == 20429:
                pacer.pause(1.0)  # Twilio says slow down: every worker waits a second
            return
        # Committed at once, so the claim check keeps the number's later texts in this batch.
        with Session(self.engine) as session:
            mark_failure(
                session=session,
                phone=delivery.phone,
                failure=result.failure,
                code=result.error_code,
            )
            session.commit()
        if result.failure == Failure.OPTED_OUT:
            tally.blocked["opted_out"] += 1
        elif result.failure == Failure.UNDELIVERABLE:
            tally.failed.append("undeliverable")
        else:
            tally.failed.append(f"error:{result.error_code}")


def _unsent_status(result) -> str:
    """A failed text's turn status: to retry, in doubt (never resent), or failed."""
    if result.retryable:
        return "retry"
    return UNKNOWN if result.outcome_unknown else "failed"


def _apply_early_reports(session: Session, accepted: Sequence[tuple[int, str]]) -> None:
    """Apply delivery reports that reached the webhook before their turn was saved."""
    if not accepted:
        return
    from bot.status import EARLY_KEY, apply_early

    # One round trip for the whole batch; reports that early are rare.
    with current_app.extensions["redis"].pipeline(transaction=False) as pipe:
        for _turn_id, sid in accepted:
            pipe.exists(EARLY_KEY.format(sid=sid))
        found = pipe.execute()
    for (turn_id, _sid), exists in zip(accepted, found, strict=True):
        if exists:
            apply_early(session=session, turn=session.get(ConversationTurn, turn_id))
    session.commit()


def _finish(
    session: Session,
    owned: Sequence[int],
    context: _Context,
    tallies: dict[int, _Tally],
    finished: dict[int, _Final],
    summary: SendSummary,
    now: datetime,
) -> None:
    """Record each reminder's outcome, unless it was cancelled or claimed again meanwhile."""
    table = Reminder.__table__
    changes: list[dict[str, Any]] = []
    for reminder_id in owned:
        row = context.rows[reminder_id]
        if reminder_id in finished:
            final = finished[reminder_id]
            status, reason = final.status, final.reason
            if status == ReminderStatus.SCHEDULED:
                summary.skipped[reason] += 1
                continue  # planning already holds it again
            changes.append(_outcome(row, status, reason, now, send_at=final.send_at))
            if status == ReminderStatus.DEFERRED:
                summary.deferred += 1
            else:
                summary.skipped[reason] += 1
            continue
        tally = tallies[reminder_id]
        if tally.canceled:
            summary.skipped["canceled"] += 1
            continue
        status, reason, send_at = _conclude(row, tally)
        changes.append(_outcome(row, status, reason, now, send_at=send_at, tried=tally.tried))
        if status == ReminderStatus.SENT:
            summary.sent += 1
        elif status == ReminderStatus.DEFERRED:
            if reason == "quiet_hours":
                summary.deferred += 1
            else:
                summary.retrying += 1
        else:
            summary.skipped[reason] += 1
    if changes:
        session.execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                table.c.claim_token == sa.bindparam("b_token"),
                table.c.status == ReminderStatus.SENDING,
            )
            .values(
                status=sa.bindparam("b_status"),
                attempts=sa.bindparam("b_attempts"),
                reason=sa.bindparam("b_reason"),
                send_at=sa.bindparam("b_send_at"),
                sent_at=sa.bindparam("b_sent_at"),
                updated_at=sa.bindparam("b_updated_at"),
            ),
            changes,
        )
    session.commit()


def _conclude(row: _Row, tally: _Tally) -> tuple[ReminderStatus, str | None, datetime | None]:
    """A reminder's status from how its phones came out; texts still owed keep it waiting."""
    if tally.deferred_until or tally.retry_at:
        tries = row.attempts + 1 if tally.tried else row.attempts
        if tally.retry_at and not tally.deferred_until and tries >= MAX_ATTEMPTS:
            return ReminderStatus.FAILED, f"gave_up:{tally.retry_codes[-1]}"[:64], None
        reason = "quiet_hours" if tally.deferred_until else f"retry:{tally.retry_codes[-1]}"
        return ReminderStatus.DEFERRED, reason[:64], min(tally.deferred_until + tally.retry_at)
    if tally.sent_before or tally.sent_now:
        return ReminderStatus.SENT, None, None
    if tally.unknown:
        return ReminderStatus.FAILED, "outcome_unknown", None
    if tally.failed:
        return ReminderStatus.FAILED, tally.failed[0][:64], None
    if tally.blocked:
        return ReminderStatus.SKIPPED, "opted_out", None
    return ReminderStatus.SKIPPED, "not_enrolled", None


def _outcome(
    row: _Row,
    status: ReminderStatus,
    reason: str | None,
    now: datetime,
    *,
    send_at: datetime | None = None,
    tried: bool = False,
) -> dict[str, Any]:
    return {
        "b_id": row.id,
        "b_token": row.token,
        "b_attempts": row.attempts + 1 if tried else row.attempts,
        "b_status": status,
        "b_reason": reason,
        "b_send_at": send_at or row.send_at,
        "b_sent_at": (row.sent_at or now) if status == ReminderStatus.SENT else row.sent_at,
        "b_updated_at": now,
    }
