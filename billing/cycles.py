"""Payment cycles: what the installment due next asks for, and what has paid it. Pure.

Reminders (jobs.reminders) judge a cycle here; nothing here reads the database.

The cycle due on D starts at local midnight after D minus one calendar month (the previous due
date P) and the previous cycle likewise ends on P. Payments (net of refunds, by when they were
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

from jobs.schedule import local_midnight


def minus_one_month(day: date) -> date:
    """The same day a month earlier, or that month's last day (Mar 31 -> Feb 28)."""
    year, month = (day.year, day.month - 1) if day.month > 1 else (day.year - 1, 12)
    following = date(year + (month == 12), month % 12 + 1, 1)
    last = (following - timedelta(days=1)).day
    return date(year, month, min(day.day, last))


def cycle_start(due_date: date, zone: ZoneInfo) -> datetime:
    """Where the cycle due on `due_date` begins: the day after the previous due date, local."""
    return local_midnight(minus_one_month(due_date) + timedelta(days=1), zone)


def previous_cycle_start(due_date: date, zone: ZoneInfo) -> datetime:
    """Where the cycle before the one due on `due_date` begins."""
    return cycle_start(minus_one_month(due_date), zone)


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
