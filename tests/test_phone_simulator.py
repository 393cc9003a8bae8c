"""The development phone simulator: the same signed webhook path, shown as a chat thread."""

import re

from sqlmodel import select

from models import ConversationTurn
from tests.factories import make_case, make_enrollment


def send(client, phone, body):
    """Submit the simulator's form the way a browser does, CSRF token included."""
    page = client.get("/dev/phone").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    token = match.group(1) if match else ""
    return client.post("/dev/phone", data={"phone": phone, "body": body, "csrf_token": token})


def test_the_simulator_lists_enrolled_numbers(client, session):
    make_enrollment(session, make_case(session), "+16175550134")
    page = client.get("/dev/phone").get_data(as_text=True)
    assert 'id="phone"' in page and "(617) 555-0134" in page and 'id="thread"' in page


def test_a_text_typed_in_the_simulator_goes_through_the_webhook(client, session):
    make_enrollment(session, make_case(session, balance_cents=42_000), "+16175550134")
    response = send(client, "+16175550134", "BAL")
    assert response.status_code == 302
    turns = session.exec(select(ConversationTurn).order_by(ConversationTurn.id)).all()
    assert [t.direction for t in turns] == ["inbound", "outbound"]
    assert turns[0].provider_message_id.startswith("SM") and turns[0].intent == "balance"
    thread = client.get("/dev/phone/thread?phone=%2B16175550134").get_data(as_text=True)
    assert "$420.00" in thread and "BAL" in thread


def test_the_simulator_escapes_what_payers_type(client, session):
    make_enrollment(session, make_case(session), "+16175550134")
    send(client, "+16175550134", "<script>alert(1)</script>")
    page = client.get("/dev/phone?phone=%2B16175550134").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_a_bad_number_in_the_simulator_is_explained(client, session):
    response = send(client, "12", "hi")
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "not a" in page and "phone number" in page
    assert session.exec(select(ConversationTurn)).all() == []
