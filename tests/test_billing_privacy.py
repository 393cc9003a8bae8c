"""No card number is stored or logged: every test card goes through the sandbox flow, then every
text column of every table, the captured logs and the sandbox's Redis are searched for it."""

from __future__ import annotations

import json
import logging
import re

import sqlalchemy as sa
from sqlmodel import SQLModel

import db
from billing import links, service
from billing.testcards import TEST_CARDS, CardBehaviour
from models import PaymentStatus
from tests.billing_helpers import (
    confirmed_payment,
    csrf_field,
    path_of,
    payment,
    received,
    texts,
)
from tests.factories import make_case, make_enrollment


def spaced(number: str) -> str:
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def mistyped(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def _searchable(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value if isinstance(value, str) else ""


def leaks(haystack: str, numbers: list[str]) -> list[str]:
    """Card numbers found in the text, as typed or with their spaces and dashes removed."""
    squeezed = re.sub(r"[\s-]", "", haystack)
    return [n for n in numbers if n in haystack or n in squeezed]


def test_the_search_finds_a_number_however_it_was_spaced():
    assert leaks("card 4242 4242 4242 4242 here", ["4242424242424242"]) == ["4242424242424242"]
    assert leaks("4242-4242-4242-4242", ["4242424242424242"]) == ["4242424242424242"]
    assert leaks("ending 4242", ["4242424242424242"]) == []


def test_no_card_number_is_stored_or_logged_after_every_test_card_is_used(
    app, session, runner, caplog
):
    caplog.set_level(logging.DEBUG)
    numbers = [card.number for card in TEST_CARDS] + [mistyped(c.number) for c in TEST_CARDS]
    client = app.test_client()
    for index, test_card in enumerate(TEST_CARDS):
        case = make_case(session)
        make_enrollment(session, case, f"+1617555{index:04d}")
        with app.app_context():
            path = path_of(links.card_link_url(case_id=case.id))
        page = client.get(path)
        form = {
            **csrf_field(page.text),
            "exp_month": "12",
            "exp_year": "2034",
            "cvc": "1234" if test_card.brand == "amex" else "123",
        }
        refused = client.post(path, data={**form, "number": mistyped(test_card.number)})
        assert refused.status_code == 400
        saved = client.post(path, data={**form, "number": spaced(test_card.number)})
        assert saved.status_code == 200, saved.text

        from billing.cards import active_card

        card = active_card(session=session, case_id=case.id)
        created = confirmed_payment(app, session, case, card, 12_500)
        with app.app_context():
            service.enqueue_charge(payment_id=created.id)
        if test_card.behaviour is CardBehaviour.REQUIRES_AUTHENTICATION:
            [asked] = texts(session, intent="auth_required")
            approve = path_of(received(app, asked).split("finish: ", 1)[1].split(" ", 1)[0])
            client.post(approve, data=csrf_field(client.get(approve).text))
        if payment(session, created.id).status == PaymentStatus.SUCCEEDED:
            with app.app_context():
                service.refund_payment(
                    session=session, payment_id=created.id, amount_cents=2_500, admin_user_id=None
                )
    attached = make_case(session)
    result = runner.invoke(
        args=["cards", "attach-test", attached.case_number, "--number", "4242424242424242"]
    )
    assert result.exit_code == 0
    assert len(texts(session, intent="receipt")) == 4  # visa, mastercard, amex, authenticated

    found, scanned = [], []
    with db.engine(app).connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for row in connection.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    scanned.append(_searchable(value))
                    for number in leaks(_searchable(value), numbers):
                        found.append(f"{table.name}.{column}: {number}")
    assert found == []
    # The search did read the texts, the cards' last 4 digits and the processor ids.
    everything = "\n".join(scanned)
    assert "card ending 0005" in everything and "pm_" in everything
    assert leaks(caplog.text, numbers) == []
    redis = app.extensions["redis"]
    stored = []
    for key in redis.scan_iter("paytext:*"):
        kind = redis.type(key)
        if kind == b"hash":
            stored.extend(v.decode() for v in redis.hvals(key))
        elif kind == b"string":
            stored.append(redis.get(key).decode())
    assert stored and leaks("\n".join(stored), numbers) == []
