"""Operator commands: `flask reminders plan` and `flask reminders dispatch [--dry-run]`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from flask.cli import AppGroup
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jobs import reminders

reminders_cli = AppGroup("reminders", help="Reminder planning and sending.")


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (when it is a terminal), fed by (done, total) calls."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )
    task = bar.add_task(description, total=None)

    def advance(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield advance


def _reasons(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items()))


@reminders_cli.command("plan")
def plan_command() -> None:
    """Plan (or re-plan) the reminders of every case with an active phone."""
    with _progress("Planning cases") as progress:
        summary = reminders.plan_all(progress=progress)
    click.echo(
        f"Cases: {summary.cases:,}. Planned: {summary.planned:,} new, {summary.updated:,} "
        f"moved, {summary.unchanged:,} unchanged, {summary.too_late:,} too late to send. "
        f"Cancelled: {_reasons(summary.canceled)}."
    )
    if summary.failed:
        click.echo(
            f"Not planned: {summary.failed:,} case(s) whose dates cannot be planned "
            "(logged with their case ids); every other case was planned.",
            err=True,
        )


@reminders_cli.command("dispatch")
@click.option("--dry-run", is_flag=True, help="Report what is due without sending anything.")
def dispatch_command(dry_run: bool) -> None:
    """Send the reminders that are due now, and invitations held for quiet hours (the cron job
    does this every minute)."""
    with _progress("Dispatching reminders") as progress:
        summary = reminders.dispatch_due(dry_run=dry_run, progress=progress)
    verb = "Would enqueue" if dry_run else "Enqueued"
    sent = (
        f"Sent: {summary.sent:,}."
        if summary.inline
        else "Sent: by the workers (see each case's page)."
        if not dry_run
        else "Sent: none (dry run)."
    )
    click.echo(
        f"Due: {summary.due:,}. {verb}: {summary.enqueued:,} in {summary.jobs:,} job(s). "
        f"Recovered from lost jobs: {summary.recovered:,}. {sent} "
        f"Deferred (quiet hours): {summary.deferred:,}. "
        f"Skipped: {_reasons(summary.skipped)}. "
        f"Opt-in invitations held for quiet hours, now due: {summary.invites_due:,}."
    )
