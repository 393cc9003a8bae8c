"""Operator commands: cases import, enroll, admin create-user, seed-demo."""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from admin.users import UserError, create_user
from cases import service
from cases.importer import not_utf8, read_cases
from db import session_scope
from models import EnrollmentSource, Role
from phones import PhoneError, format_phone, own_numbers, textable_phone

cases_cli = AppGroup("cases", help="Case data commands.")
admin_cli = AppGroup("admin", help="Staff account commands.")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not sys.stderr.isatty(),
        console=None,
    )


@cases_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_command(file: Path) -> None:
    """Import or update cases from FILE.csv; nothing is written unless every row is valid.

    Columns: case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone
    (dollars like 125.00 up to 10,000,000.00, dates YYYY-MM-DD from 2000 to 2099 with
    next_due_date empty when there is none, mobile phones in any common US format).
    Existing cases are updated; an empty language or timezone cell keeps the stored value.
    """
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{file} is {not_utf8(data, exc)}") from exc
    plan = read_cases(io.StringIO(text, newline=""), own=own_numbers(current_app.config))
    if not plan.ok:
        for error in plan.errors:
            click.echo(str(error), err=True)
        raise click.ClickException(
            f"{len(plan.errors)} bad line(s) in {file.name}; nothing was imported"
        )
    with _progress() as progress, session_scope() as session:
        task = progress.add_task("Importing cases", total=len(plan.rows))
        result = service.apply_import(
            session=session,
            rows=plan.rows,
            consent_version=current_app.config["CONSENT_VERSION"],
            progress=lambda n: progress.advance(task, n),
        )
    click.echo(
        f"Imported {len(plan.rows)} case(s): {result.created} new, {result.updated} updated, "
        f"{result.enrollments_created} pending enrollment(s) added."
    )
    if result.opted_out:
        click.echo(
            f"{result.opted_out} number(s) opted out of texts earlier: enrolled opted out and "
            "never invited; they get texts only if the payer texts START."
        )


@click.command("enroll")
@with_appcontext
@click.argument("case_number", required=False)
@click.argument("phone", required=False)
@click.option("--lang", type=click.Choice(["en", "es"]), help="Language of the texts.")
@click.option("--confirmed", is_flag=True, help="Consent was captured elsewhere: active at once.")
@click.option(
    "--invite-pending",
    is_flag=True,
    help="Text the opt-in to uninvited pending numbers (in quiet hours, when they end).",
)
def enroll_command(
    case_number: str | None,
    phone: str | None,
    lang: str | None,
    confirmed: bool,
    invite_pending: bool,
) -> None:
    """Enroll PHONE on CASE_NUMBER (pending until the payer replies YES), or --invite-pending."""
    if invite_pending:
        if case_number or phone or confirmed or lang:
            raise click.UsageError("--invite-pending takes no other arguments")
        from bot.outbound import invite_pending as send_invites

        done = send_invites()
        click.echo(f"Invited {done.sent} pending number(s); {done.failed} could not be texted.")
        if done.held:
            times = Counter(held.when() for held in done.held)
            shown = ", ".join(f"{n} at {when}" for when, n in sorted(times.items()))
            click.echo(
                f"{len(done.held)} held for the payers' quiet hours, to be sent when each "
                f"payer's texting window opens: {shown}."
            )
        if done.retrying:
            times = Counter(held.when() for held in done.retrying)
            shown = ", ".join(f"{n} at {when}" for when, n in sorted(times.items()))
            click.echo(
                f"{len(done.retrying)} not sent: Twilio was busy or could not take them for "
                f"now; they will be retried: {shown}."
            )
        if done.opted_out:
            click.echo(
                f"{done.opted_out} not invited: the number opted out of texts (or cannot "
                "receive them); only the payer can opt back in, by texting START."
            )
        if done.failed:
            sys.exit(1)
        return
    if not case_number or not phone:
        raise click.UsageError("give CASE_NUMBER and PHONE, or --invite-pending")
    try:
        e164 = textable_phone(phone, own=own_numbers(current_app.config))
    except PhoneError as exc:
        raise click.ClickException(str(exc)) from exc
    with session_scope() as session:
        case = service.get_by_number(session=session, case_number=case_number)
        if case is None:
            raise click.ClickException(f"no case numbered {case_number}")
        _enrollment, outcome = service.enroll(
            session=session,
            case=case,
            phone=e164,
            language=lang,
            source=EnrollmentSource.CLI,
            confirmed=confirmed,
            consent_version=current_app.config["CONSENT_VERSION"],
        )
        shown = f"{format_phone(e164)} on case {case.case_number}"
        if outcome == service.EnrollOutcome.OPTED_OUT:
            stopped = service.opt_outs(session=session, phones=[e164])[e164]
    if outcome == service.EnrollOutcome.OPTED_OUT:
        when = f" on {stopped:%Y-%m-%d}" if stopped else ""
        # Exit after the session committed: a new case keeps the (opted-out) enrollment.
        click.echo(
            f"{format_phone(e164)} opted out of texts{when}. It stays opted out on case "
            f"{case.case_number}: staff cannot undo a STOP; only the payer can, by texting START."
        )
        sys.exit(1)
    messages = {
        service.EnrollOutcome.CREATED_PENDING: f"Enrolled {shown}: pending until the payer "
        "replies YES (send the invitation with `flask enroll --invite-pending`).",
        service.EnrollOutcome.CREATED_ACTIVE: f"Enrolled {shown}: active.",
        service.EnrollOutcome.ACTIVATED: f"Activated {shown}.",
        service.EnrollOutcome.ALREADY_PENDING: f"{shown} is already pending; "
        "use --confirmed if consent was captured elsewhere.",
        service.EnrollOutcome.ALREADY_ACTIVE: f"{shown} is already active; nothing changed.",
    }
    click.echo(messages[outcome])


@admin_cli.command("create-user")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.ADMIN.value,
    show_default=True,
)
def create_user_command(email: str, role: str) -> None:
    """Create a staff account for EMAIL; the password is asked for, never passed as an argument."""
    password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with session_scope() as session:
            user = create_user(session=session, email=email, password=password, role=Role(role))
            click.echo(f"Created {user.role} {user.email}.")
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("seed-demo")
@with_appcontext
def seed_demo_command() -> None:
    """Add a handful of demo cases, enrollments, appointments and sandbox cards (idempotent)."""
    from cases.demo import seed

    with session_scope() as session:
        created = seed(session=session, app=current_app)
    click.echo(f"Demo data: {created} new case(s).")


def register(app: Flask) -> None:
    """Add the operator commands to `flask`."""
    for command in (cases_cli, admin_cli, enroll_command, seed_demo_command):
        app.cli.add_command(command)
