"""Card and approval links are bearer credentials: the payer's phone gets the real link, while
every stored turn, conversation and log record keeps it with its token masked.

Each path that texts a link is run, the link the phone got is opened, and then every text
column of every table and the captured logs are searched for any link token.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

import db
from app import create_app
from billing import links, service
from bot import outbound
from bot.redact import LINK_MARKER, link_tokens_masked
from models import ConversationTurn, Role
from tests.admin_helpers import post_form, signed_in
from tests.billing_helpers import (
    AUTHENTICATION,
    DECLINED,
    add_card,
    confirmed_payment,
    csrf_field,
    path_of,
    received,
    texts,
)
from tests.factories import make_case, make_enrollment
from tests.sms_helpers import inbound_params, post_signed, replies

PHONE = "+16175550134"
# A link with anything but the marker after its kind: a token, whole or in part.
TOKEN = re.compile(r"/pay/(?:card|auth)/(?!" + re.escape(LINK_MARKER) + r")[A-Za-z0-9_%=-]{4,}")
LINK = re.compile(r"https?://\S+/pay/(?:card|auth)/[A-Za-z0-9_-]+")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def stored_tokens(app) -> list[str]:
    """Every link token found in any text or JSON column of any table."""
    found = []
    with db.engine(app).connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for row in connection.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    text = json.dumps(value) if isinstance(value, dict | list) else value
                    if isinstance(text, str):
                        found += [f"{table.name}.{column}: {m}" for m in TOKEN.findall(text)]
    return found


def assert_kept_masked(app, logs) -> None:
    assert stored_tokens(app) == []
    assert TOKEN.findall(logs.text) == []


def link_in(text: str) -> str:
    [link] = LINK.findall(text)
    return link


def text(client, body: str, sid: str | None = None) -> list[str]:
    return replies(post_signed(client, "/sms/inbound", inbound_params(body, PHONE, sid), None))


def opens_card_page(app, link: str) -> bool:
    page = app.test_client().get(path_of(link))
    return page.status_code == 200 and "Add a card" in page.text


def test_masking_keeps_the_link_kind_and_the_words_around_it():
    body = "Add a card here: https://pay.example.gov/pay/card/AbC_d-9xYz Then reply PAY."
    assert link_tokens_masked(body) == (
        "Add a card here: https://pay.example.gov/pay/card/[redacted] Then reply PAY."
    )
    assert link_tokens_masked("finish: http://x/pay/auth/Zz9-_q.") == (
        "finish: http://x/pay/auth/[redacted]."
    )
    assert link_tokens_masked(link_tokens_masked(body)) == link_tokens_masked(body)


def test_pay_without_a_card_texts_a_working_link_and_keeps_it_masked(app, client, session, logs):
    case = make_case(session)
    make_enrollment(session, case, PHONE)

    (reply,) = text(client, "PAY")

    assert opens_card_page(app, link_in(reply))
    [logged] = texts(session, intent=None)
    assert logged.body == link_tokens_masked(reply) and "/pay/card/[redacted]" in logged.body
    assert logged.case_id == case.id
    assert_kept_masked(app, logs)


def test_a_pay_twilio_sends_again_is_answered_with_a_working_link(app, client, session, logs):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    (first,) = text(client, "PAY", sid="SM" + "7" * 32)

    (again,) = text(client, "PAY", sid="SM" + "7" * 32)

    assert LINK_MARKER not in again and opens_card_page(app, link_in(again))
    assert link_tokens_masked(again) == link_tokens_masked(first)
    assert_kept_masked(app, logs)


def test_a_link_the_payer_texts_back_is_stored_masked(app, client, session, logs):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    (reply,) = text(client, "PAY")

    text(client, f"is this real? {link_in(reply)}")

    assert_kept_masked(app, logs)


def test_staff_sending_a_card_link_texts_a_working_link_and_keeps_it_masked(
    app, client, session, logs
):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    signed_in(client, session, Role.STAFF)

    response = post_form(client, f"/admin/cases/{case.id}/card-link", {"phone": PHONE}, "card")

    assert response.status_code == 302
    [turn] = texts(session, intent="card_link")
    assert opens_card_page(app, link_in(received(app, turn)))
    assert "/pay/card/[redacted]" in turn.body
    page = client.get(f"/admin/cases/{case.id}").text
    assert "/pay/card/[redacted]" in page and TOKEN.findall(page) == []
    assert_kept_masked(app, logs)


def test_a_declined_card_texts_a_working_card_link_and_keeps_it_masked(app, session, logs):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case, DECLINED)
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)

    [declined] = texts(session, intent="declined")
    assert "/pay/card/[redacted]" in declined.body
    assert opens_card_page(app, link_in(received(app, declined)))
    assert_kept_masked(app, logs)


def test_a_held_payment_texts_a_working_approval_link_and_keeps_it_masked(app, session, logs):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case, AUTHENTICATION)
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)

    [asked] = texts(session, intent="auth_required")
    assert "/pay/auth/[redacted]" in asked.body
    client = app.test_client()
    path = path_of(link_in(received(app, asked)))
    page = client.get(path)
    assert page.status_code == 200 and "Approve payment" in page.text
    done = client.post(path, data=csrf_field(page.text))
    assert "went through" in done.text and len(texts(session, intent="receipt")) == 1
    assert_kept_masked(app, logs)


def test_an_approval_text_left_unsent_by_a_crash_goes_later_with_a_working_link(
    app, session, logs, monkeypatch
):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    card = add_card(app, session, case, AUTHENTICATION)
    created = confirmed_payment(app, session, case, card, 25_000)
    with monkeypatch.context() as crashed:
        crashed.setattr(outbound, "send_queued", lambda turn_ids: 0)  # died right after commit
        with app.app_context():
            service.enqueue_charge(payment_id=created.id)
    [asked] = texts(session, intent="auth_required")
    assert asked.delivery_status == outbound.TO_SEND

    with app.app_context():
        assert outbound.send_left_behind(now=asked.created_at + outbound.LEFT_BEHIND_AFTER * 2)

    [asked] = texts(session, intent="auth_required")
    assert asked.delivery_status == "sent"
    page = app.test_client().get(path_of(link_in(received(app, asked))))
    assert page.status_code == 200 and "Approve payment" in page.text
    assert_kept_masked(app, logs)


def simulator_send(client, body: str):
    page = client.get("/dev/phone").text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    data = {"phone": PHONE, "body": body, "csrf_token": match.group(1) if match else ""}
    return client.post("/dev/phone", data=data)


def test_the_phone_simulator_shows_the_real_links_to_click(app, client, session, logs):
    case = make_case(session)
    make_enrollment(session, case, PHONE)
    assert simulator_send(client, "PAY").status_code == 302  # a card link, in the TwiML reply
    card = add_card(app, session, case, AUTHENTICATION)
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)  # an approval link, sent as the worker does

    thread = client.get("/dev/phone/thread?phone=%2B16175550134").text

    hrefs = re.findall(r'<a href="([^"]+)">', thread)
    assert [h.split("/pay/")[1].split("/")[0] for h in hrefs] == ["card", "auth"]
    for href in hrefs:
        assert app.test_client().get(path_of(href)).status_code == 200
    assert session.exec(select(ConversationTurn)).all()
    assert_kept_masked(app, logs)


def test_a_link_page_that_fails_is_logged_with_its_token_masked(config, logs):
    """Flask's error line names the path: for a card link, the credential itself."""
    # Redis down, not testing: the page fails with a 500 and is logged, as in production.
    config.update(REDIS_URL="redis://127.0.0.1:1/0", TESTING=False)
    app = create_app(config)
    with Session(db.engine(app)) as session:
        case = make_case(session)
        with app.app_context():
            link = links.card_link_url(case_id=case.id)

    response = app.test_client().get(path_of(link))

    assert response.status_code == 500
    assert "Exception on /pay/card/[redacted] [GET]" in logs.text
    assert TOKEN.findall(logs.text) == []
    db.engine(app).dispose()
