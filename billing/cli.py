"""Billing commands: attach a sandbox test card to a case, resume payments whose job was lost."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from billing.cards import attach_test_card
from billing.gateway import CardError
from cases.service import get_by_number
from db import session_scope
from models import utcnow

cards_cli = AppGroup("cards", help="Cards on file.")
payments_cli = AppGroup("payments", help="Payments by text.")


@cards_cli.command("attach-test")
@click.argument("case_number")
@click.option("--number", required=True, help="A Stripe test card number, e.g. 4242424242424242.")
@click.option("--exp-month", type=click.IntRange(1, 12), default=12, show_default=True)
@click.option("--exp-year", type=int, default=None, help="Four digits; default: three years on.")
def attach_test_command(
    case_number: str, number: str, exp_month: int, exp_year: int | None
) -> None:
    """Save a Stripe test card on CASE_NUMBER as its card on file (sandbox backend only)."""
    if current_app.config["PAYMENT_BACKEND"] != "sandbox":
        raise click.ClickException(
            "cards attach-test works only with the sandbox (STRIPE_SECRET_KEY unset); with "
            "Stripe, send the payer a card link from the case page."
        )
    with session_scope() as session:
        case = get_by_number(session=session, case_number=case_number.strip())
        if case is None:
            raise click.ClickException(f"No case {case_number!r}.")
        try:
            card = attach_test_card(
                session=session,
                gateway=current_app.extensions["payments"],
                case=case,
                number=number,
                exp_month=exp_month,
                exp_year=exp_year or utcnow().year + 3,
            )
        except CardError as exc:
            # The message names the problem, never the number.
            raise click.ClickException(str(exc)) from exc
        click.echo(
            f"Saved {card.brand} ending {card.last4} (exp {card.exp_month:02d}/{card.exp_year}) "
            f"on case {case.case_number}."
        )


@payments_cli.command("resume")
@click.option(
    "--idle-minutes",
    type=click.IntRange(0),
    default=None,
    help="Only payments untouched this long (default: 10).",
)
def resume_command(idle_minutes: int | None) -> None:
    """Queue the charge again for confirmed payments whose job was lost (worker or Redis died)."""
    from billing.jobs import resume_payments

    seconds = None if idle_minutes is None else idle_minutes * 60
    click.echo(f"Resumed {resume_payments(stale_after_seconds=seconds)} payment(s).")


def register(app: Flask) -> None:
    """Add the billing commands to `flask`."""
    app.cli.add_command(cards_cli)
    app.cli.add_command(payments_cli)
