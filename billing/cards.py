"""Cards on file: PayText keeps ids, brand, last 4 and expiry of a saved card, never its number."""

from __future__ import annotations

import uuid

from sqlmodel import Session, select

from billing.gateway import PaymentGateway, SavedCard
from models import CardOnFile, Case, utcnow


def active_card(*, session: Session, case_id: int) -> CardOnFile | None:
    """The card a case pays with now, if it has one."""
    return session.exec(
        select(CardOnFile)
        .where(CardOnFile.case_id == case_id, CardOnFile.active.is_(True))
        .order_by(CardOnFile.id.desc())
    ).first()


def ensure_customer(*, session: Session, gateway: PaymentGateway, case: Case) -> str:
    """The case's customer at the processor, created on first use."""
    customer_id = gateway.ensure_customer(
        case_number=case.case_number,
        name=case.payer_name,
        existing_customer_id=case.processor_customer_id,
    )
    if case.processor_customer_id != customer_id:
        case.processor_customer_id = customer_id
        session.add(case)
        session.flush()
    return customer_id


def store_card(
    *, session: Session, case: Case, customer_id: str, card: SavedCard, processor: str
) -> CardOnFile:
    """Keep a newly saved card as the case's active one; the card it replaces stays on record."""
    now = utcnow()
    previous = active_card(session=session, case_id=case.id)
    if previous is not None and previous.payment_method_id == card.payment_method_id:
        return previous
    if previous is not None:
        previous.active = False
        previous.replaced_at = now
        session.add(previous)
    stored = CardOnFile(
        case_id=case.id,
        processor=processor,
        customer_id=customer_id,
        payment_method_id=card.payment_method_id,
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        created_at=now,
    )
    session.add(stored)
    session.flush()
    return stored


def attach_test_card(
    *, session: Session, gateway, case: Case, number: str, exp_month: int, exp_year: int
) -> CardOnFile:
    """Sandbox only: save a Stripe test card number on a case, as the card page would."""
    customer_id = ensure_customer(session=session, gateway=gateway, case=case)
    setup = gateway.create_card_setup(
        customer_id=customer_id,
        case_number=case.case_number,
        idempotency_key=f"paytext-setup-{case.case_number}-{uuid.uuid4().hex}",
    )
    gateway.save_test_card(
        setup_id=setup.setup_id,
        card_number=number,
        exp_month=exp_month,
        exp_year=exp_year,
        cvc="123",
    )
    card = gateway.card_from_setup(setup_id=setup.setup_id)
    return store_card(
        session=session, case=case, customer_id=customer_id, card=card, processor=gateway.name
    )
