"""Dashboard figures per local day, computed from plain rows (pure: no database, no clock)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

DELIVERED = frozenset({"delivered", "read"})
"""Provider statuses that mean the handset got the text."""

FAILED = frozenset({"failed", "undelivered"})
"""Provider statuses that mean it never will."""

REPLY_WINDOW = timedelta(hours=48)
"""A reminder counts as answered when the case texts back within this long."""


@dataclass(frozen=True)
class TextDay:
    day: date
    sent: int = 0
    delivered: int = 0
    failed: int = 0


@dataclass(frozen=True)
class PaymentDay:
    day: date
    count: int = 0
    cents: int = 0


@dataclass(frozen=True)
class ReplyDay:
    day: date
    reminders: int = 0
    replied: int = 0

    @property
    def rate(self) -> float | None:
        """Share of reminders answered, or None when none were sent that day."""
        return self.replied / self.reminders if self.reminders else None


@dataclass(frozen=True)
class Dashboard:
    days: list[date]
    texts: list[TextDay]
    payments: list[PaymentDay]
    opt_outs: list[tuple[date, int]]
    replies: list[ReplyDay]

    @property
    def totals(self) -> dict[str, int]:
        """Sums over the whole window."""
        return {
            "sent": sum(d.sent for d in self.texts),
            "delivered": sum(d.delivered for d in self.texts),
            "failed": sum(d.failed for d in self.texts),
            "payments": sum(d.count for d in self.payments),
            "payment_cents": sum(d.cents for d in self.payments),
            "opt_outs": sum(n for _, n in self.opt_outs),
            "reminders": sum(d.reminders for d in self.replies),
            "replied": sum(d.replied for d in self.replies),
        }

    @property
    def reply_rate(self) -> float | None:
        """Share of the window's reminders that got a reply."""
        totals = self.totals
        return totals["replied"] / totals["reminders"] if totals["reminders"] else None


def window(now: datetime, days: int, zone: str) -> tuple[list[date], datetime]:
    """The last `days` local days up to today, and the UTC instant the first one starts."""
    tz = ZoneInfo(zone)
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=tz)
    return [first + timedelta(days=i) for i in range(days)], start


def _day(moment: datetime, tz: ZoneInfo) -> date:
    return moment.astimezone(tz).date()


def texts_per_day(
    rows: Iterable[tuple[datetime, str | None]], days: list[date], zone: str
) -> list[TextDay]:
    """Outbound texts (created_at, delivery_status) counted per local day."""
    tz = ZoneInfo(zone)
    counts: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    for created_at, status in rows:
        bucket = counts[_day(created_at, tz)]
        bucket[0] += 1
        bucket[1] += status in DELIVERED
        bucket[2] += status in FAILED
    return [TextDay(day, *counts.get(day, (0, 0, 0))) for day in days]


def payments_per_day(
    rows: Iterable[tuple[datetime, int]], days: list[date], zone: str
) -> list[PaymentDay]:
    """Succeeded payments (succeeded_at, amount_cents) counted and summed per local day."""
    tz = ZoneInfo(zone)
    counts: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for succeeded_at, cents in rows:
        bucket = counts[_day(succeeded_at, tz)]
        bucket[0] += 1
        bucket[1] += cents
    return [PaymentDay(day, *counts.get(day, (0, 0))) for day in days]


def opt_outs_per_day(
    rows: Iterable[datetime], days: list[date], zone: str
) -> list[tuple[date, int]]:
    """Numbers that opted out (each one's opted_out_at) counted per local day."""
    tz = ZoneInfo(zone)
    counts: dict[date, int] = defaultdict(int)
    for opted_out_at in rows:
        counts[_day(opted_out_at, tz)] += 1
    return [(day, counts.get(day, 0)) for day in days]


def replies_per_day(
    reminders: Iterable[tuple[int, datetime]],
    inbound: Iterable[tuple[int, datetime]],
    days: list[date],
    zone: str,
    reply_window: timedelta = REPLY_WINDOW,
) -> list[ReplyDay]:
    """Reminders sent (case_id, sent_at) per local day, and how many the case answered in time."""
    tz = ZoneInfo(zone)
    inbound_by_case: dict[int, list[datetime]] = defaultdict(list)
    for case_id, at in inbound:
        inbound_by_case[case_id].append(at)
    for times in inbound_by_case.values():
        times.sort()
    counts: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for case_id, sent_at in reminders:
        bucket = counts[_day(sent_at, tz)]
        bucket[0] += 1
        times = inbound_by_case.get(case_id, [])
        first_after = bisect.bisect_right(times, sent_at)
        bucket[1] += first_after < len(times) and times[first_after] <= sent_at + reply_window
    return [ReplyDay(day, *counts.get(day, (0, 0))) for day in days]
