"""RQ jobs for reminders and held invitations: thin wrappers run in the worker's app context."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobs import reminders
from jobs.context import job


@job
def send_reminders(claims: list[tuple[int, int]]) -> dict[str, Any]:
    """Send a batch of claimed reminders; (reminder id, claim token) pairs."""
    return reminders.send_reminders(claims=claims).as_dict()


@job
def dispatch_reminders() -> dict[str, Any]:
    """Enqueue the reminders that are due (run by `rq cron` every REMINDER_DISPATCH_SECONDS)."""
    return reminders.dispatch_due().as_dict()


@job
def plan_reminders() -> dict[str, Any]:
    """Plan every enrolled case's reminders (run by `rq cron` every hour)."""
    return reminders.plan_all().as_dict()


@job
def send_held_invites(now: datetime | None = None) -> int:
    """Send the opt-in invitations held for quiet hours whose window has opened by `now`."""
    from bot import outbound

    return outbound.send_held_invites(now=now)
