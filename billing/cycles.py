"""Payment cycles: what the installment due next asks for, and what has paid it. Pure.

Reminders (jobs.reminders) judge a cycle here; nothing here reads the database.

The cycle due on D starts at local midnight after the previous due date P (`previous_due_date`:
D a calendar month earlier, or the previous month's last day when D is its month's last day) and
the previous cycle likewise ends on P. Payments (net of refunds, by when they were
made) pay the oldest installment first: what the previous cycle's payments fell short of its
installment is taken from this cycle's payments, and what they paid beyond it counts for this
cycle. This cycle counts as paid when nothing is owed (balance or amount due at 0), or when what
is left for it covers the amount due (the amount PAY would quote: the smaller of amount due and
balance). So last month's installment paid two days late pays last month, and this month's
reminders still go.
The previous cycle is judged only if a phone on the case could pay by text through all of it
(an active enrollment confirmed before it began): PayText cannot see an installment paid some
other way before that, so until then every payment this cycle counts for this cycle. Cycles
before the previous one are taken as settled.

The payments that count are those that succeeded and those still in flight (billing.service
IN_FLIGHT), which hold their share of the balance here as they do against the caps. An
in-flight payment is not yet taken off Case.balance_cents: callers pass the balance with it
taken off. What a cycle still asks for (`still_owed`) is what a reminder asks and PAY quotes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from billing.gateway import MINIMUM_CHARGE_CENTS
from jobs.schedule import local_midnight


def minus_one_month(day: date) -> date:
    """The same day a month earlier, or that month's last day (Mar 31 -> Feb 28)."""
    last = day.replace(day=1) - timedelta(days=1)
    return last.replace(day=min(day.day, last.day))


def last_day_of_month(day: date) -> date:
    """The last day of `day`'s month."""
    following = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return following - timedelta(days=1)


def previous_due_date(due_date: date) -> date:
    """The due date before `due_date` on a monthly schedule.

    A schedule on the 29th, 30th or 31st falls on the last day of a shorter month, so a due date
    on its month's last day follows the previous month's last day (Nov 30 after Oct 31, Feb 28
    after Jan 31, Mar 31 after Feb 28 or, in a leap year, Feb 29). Any other follows the same day
    a month earlier, or that month's last day (Mar 30 after Feb 28, Mar 29 after Feb 29).
    The date alone cannot tell a schedule on the 28th in February, or on the 30th in a 30-day
    month, from one on the 31st: the last days of the previous month (Jan 29-31 before Feb 28)
    are then taken as the previous cycle's, as a payment a few days late for it most likely is.
    """
    if due_date == last_day_of_month(due_date):
        return due_date.replace(day=1) - timedelta(days=1)
    return minus_one_month(due_date)


def cycle_start(due_date: date, zone: ZoneInfo) -> datetime:
    """Where the cycle due on `due_date` begins: the day after the previous due date, local."""
    return local_midnight(previous_due_date(due_date) + timedelta(days=1), zone)


def previous_cycle_start(due_date: date, zone: ZoneInfo) -> datetime:
    """Where the cycle before the one due on `due_date` begins."""
    return cycle_start(previous_due_date(due_date), zone)


def paid_in_cycles(
    payments: Iterable[tuple[datetime, int]],
    *,
    due_date: date,
    zone: ZoneInfo,
    texting_since: datetime | None,
) -> tuple[int, int | None]:
    """What (when, net cents) payments paid in the cycle due on `due_date` and in the one before.

    The previous cycle's is None unless a phone on the case could pay by text through all of
    it: `texting_since` (its earliest active enrollment's confirmation) before that cycle began.
    """
    start, before = cycle_start(due_date, zone), previous_cycle_start(due_date, zone)
    payments = list(payments)
    this = sum(net for at, net in payments if at >= start)
    if texting_since is None or texting_since >= before:
        return this, None
    return this, sum(net for at, net in payments if before <= at < start)


def amount_owed(*, amount_due_cents: int, balance_cents: int) -> int:
    """The installment a cycle asks for: the amount due, capped by the balance."""
    return max(0, min(amount_due_cents, balance_cents))


def paid_toward_cycle(
    *,
    amount_due_cents: int,
    balance_cents: int,
    paid_in_cycle_cents: int,
    paid_in_previous_cycle_cents: int | None,
) -> int:
    """What this cycle's payments leave for this cycle once the previous installment is paid.

    None for the previous cycle means PayText could not see it: all of this cycle's payments
    count for this cycle.
    """
    if paid_in_previous_cycle_cents is None:
        return paid_in_cycle_cents
    # The balance before either cycle's payments caps the previous installment, as it capped
    # what PAY asked for then.
    before = balance_cents + paid_in_cycle_cents + paid_in_previous_cycle_cents
    previous = amount_owed(amount_due_cents=amount_due_cents, balance_cents=before)
    return paid_in_previous_cycle_cents + paid_in_cycle_cents - previous


def still_owed(*, amount_due_cents: int, balance_cents: int, paid_toward_cycle_cents: int) -> int:
    """What this cycle still asks for: its installment less what payments left for it.

    A previous cycle's shortfall (a negative `paid_toward_cycle_cents`) takes this cycle's
    payments, but is not asked for again on top of this installment.
    """
    owed = amount_owed(amount_due_cents=amount_due_cents, balance_cents=balance_cents)
    return max(0, owed - max(0, paid_toward_cycle_cents))


def is_paid(
    *,
    amount_due_cents: int,
    balance_cents: int,
    paid_in_cycle_cents: int,
    paid_in_previous_cycle_cents: int | None = None,
) -> bool:
    """Paid this cycle: nothing is owed, or what payments leave for this cycle covers it."""
    left = paid_toward_cycle(
        amount_due_cents=amount_due_cents,
        balance_cents=balance_cents,
        paid_in_cycle_cents=paid_in_cycle_cents,
        paid_in_previous_cycle_cents=paid_in_previous_cycle_cents,
    )
    owed = still_owed(
        amount_due_cents=amount_due_cents, balance_cents=balance_cents, paid_toward_cycle_cents=left
    )
    return owed == 0


def over_balance(balance_cents: int, in_flight_cents: int) -> tuple[str, dict[str, int]]:
    """The reply to an amount over what is left to pay: the balance, less payments in flight,
    which are named, so "up to $50" on a $250 balance says why."""
    available = balance_cents - in_flight_cents
    if in_flight_cents <= 0:
        return "amount_over_balance", {"balance": balance_cents}
    if available < MINIMUM_CHARGE_CENTS:
        return "balance_processing", {"amount": in_flight_cents, "balance": balance_cents}
    params = {"amount": in_flight_cents, "balance": balance_cents, "available": available}
    return "amount_over_available", params
