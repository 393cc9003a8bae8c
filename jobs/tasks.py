"""RQ jobs for reminders: thin wrappers that run the service in the worker's app context."""

from __future__ import annotations

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
