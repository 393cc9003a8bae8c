"""Shared arrangements for the billing tests: cards on file, confirmed payments, sent texts."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import stripe
from flask import Flask
from sqlmodel import Session, select

from billing import jobs, links, service
from billing.cards import attach_test_card
from billing.testcards import CARDS_BY_NUMBER
from bot.dialogue import ChargeQuote
from models import CardOnFile, Case, ConversationTurn, Direction, Payment, utcnow
from tests.fakes.stripe_api import FakeStripe

WEBHOOK_SECRET = "whsec_test_billing"
VISA = "4242424242424242"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"
EXPIRED = "4000000000000069"
AUTHENTICATION = "4000002760003184"


def stripe_config(config: dict, fake: FakeStripe) -> dict:
    """Point the app at the Stripe fake, through the real stripe SDK."""
    config.update(
        STRIPE_SECRET_KEY=fake.secret_key,
        STRIPE_API_BASE_URL=fake.url,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_PUBLISHABLE_KEY="pk_test_fake",
    )
    return config


def add_card(app: Flask, session: Session, case: Case, number: str = VISA) -> CardOnFile:
    """Save a test card on a case the way the payer's browser would, for either backend."""
    gateway = app.extensions["payments"]
    with app.app_context():
        if gateway.name == "sandbox":
            card = attach_test_card(
                session=session,
                gateway=gateway,
                case=case,
                number=number,
                exp_month=12,
                exp_year=2040,
            )
            session.commit()
            return card
        setup = service.card_setup_for_link(
            session=session, gateway=gateway, case_id=case.id, nonce=uuid.uuid4().hex
        )
        browser = stripe.StripeClient(
            app.config["STRIPE_SECRET_KEY"],
            base_addresses={"api": app.config["STRIPE_API_BASE_URL"]},
        )
        token = CARDS_BY_NUMBER[number].token
        browser.v1.setup_intents.confirm(setup.setup_id, params={"payment_method": token})
        card = service.save_card_from_setup(
            session=session, gateway=gateway, case_id=case.id, setup_id=setup.setup_id
        )
        session.commit()
        return card


def quote_for(case: Case, card: CardOnFile, amount_cents: int, quote_id: str | None = None):
    """A quote the payer confirmed with YES."""
    return ChargeQuote(
        case_id=case.id,
        amount_cents=amount_cents,
        quote_id=quote_id or str(uuid.uuid4()),
        card_last4=card.last4,
    )


def confirmed_payment(app: Flask, session: Session, case: Case, card: CardOnFile, amount: int):
    """A committed Payment for a confirmed quote, not yet charged."""
    with app.app_context():
        payment = service.payment_for_quote(
            session=session, quote=quote_for(case, card, amount), authorized_turn_id=None
        )
        session.commit()
    return payment


def texts(session: Session, *, intent: str | None = None, payment_id: int | None = None):
    """Outbound turns, oldest first, optionally of one intent or payment."""
    session.expire_all()
    query = select(ConversationTurn).where(ConversationTurn.direction == Direction.OUTBOUND)
    if intent is not None:
        query = query.where(ConversationTurn.intent == intent)
    if payment_id is not None:
        query = query.where(ConversationTurn.payment_id == payment_id)
    return list(session.exec(query.order_by(ConversationTurn.id)).all())


def received(app: Flask, turn: ConversationTurn) -> str:
    """The text the payer's phone got for an outbound turn: the turn's copy masks its links."""
    [message] = [m for m in app.extensions["sms"].sent if m.sid == turn.provider_message_id]
    return message.body


def reload(session: Session, model, row_id: int):
    """A fresh copy of a row."""
    session.expire_all()
    return session.get(model, row_id)


def payment(session: Session, payment_id: int) -> Payment:
    return reload(session, Payment, payment_id)


def csrf_field(html: str) -> dict[str, str]:
    """The CSRF token a page's form carries, as form data (empty when CSRF is off)."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    return {"csrf_token": match.group(1)} if match else {}


def path_of(url: str) -> str:
    """The path of an absolute link, for the test client."""
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def after_approval_window(monkeypatch) -> None:
    """Move the payment sweep's and the links' clocks past the bank approval window."""
    later = utcnow() + service.APPROVAL_WINDOW + timedelta(minutes=1)
    monkeypatch.setattr(jobs, "utcnow", lambda: later)
    monkeypatch.setattr(links, "utcnow", lambda: later)
