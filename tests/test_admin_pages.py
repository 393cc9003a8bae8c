"""The staff pages: enroll, cases, the case page, handoffs, import, export, dashboard."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

import db
from admin.service import TIMELINE_PAGE, case_detail, dashboard, search_cases
from models import (
    AdminUser,
    Appointment,
    CardOnFile,
    Case,
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentStatus,
    Handoff,
    HandoffStatus,
    Payment,
    PaymentStatus,
    Refund,
    Reminder,
    ReminderKind,
    ReminderStatus,
    Role,
    utcnow,
)
from tests.admin_helpers import post_form, reload, signed_in
from tests.factories import STOPPED_AT, make_case, make_enrollment, make_stopped_enrollment
from tests.sms_helpers import replies

SCRIPT = "<script>alert('x')</script>"
NEW_CASE = {
    "case_number": "ma-2026-000123",
    "payer_name": "Ana Rivera",
    "amount_due": "250.00",
    "balance": "1,250.00",
    "next_due_date": "2030-12-01",
    "phone": "(617) 555-0134",
    "language": "es",
    "consent": "y",
}


@pytest.fixture
def admin(client, session):
    return signed_in(client, session, Role.ADMIN)


@pytest.fixture
def staff(client, session):
    return signed_in(client, session, Role.STAFF)


def texts(app) -> list:
    return list(app.extensions["sms"].sent)


def count(session, model) -> int:
    session.expire_all()
    return len(session.exec(select(model)).all())


def text_of(response) -> str:
    return response.get_data(as_text=True)


def turn(session, case, body, direction=Direction.INBOUND, **fields) -> ConversationTurn:
    row = ConversationTurn(
        case_id=case.id, phone="+16175550134", direction=direction, body=body, **fields
    )
    session.add(row)
    session.commit()
    return row


# --- Enroll ----------------------------------------------------------------------------------


def test_enrolling_a_number_on_a_new_case_sends_the_double_opt_in_and_stays_pending(
    app, client, session, staff, daytime
):
    response = post_form(client, "/admin/enroll", NEW_CASE)
    assert response.status_code == 302
    case = session.exec(select(Case)).one()
    assert (case.case_number, case.payer_name) == ("MA-2026-000123", "Ana Rivera")
    assert (case.amount_due_cents, case.balance_cents) == (25_000, 125_000)
    assert case.next_due_date.isoformat() == "2030-12-01"
    enrollment = session.exec(select(Enrollment)).one()
    assert enrollment.phone == "+16175550134" and enrollment.language == "es"
    assert enrollment.status == EnrollmentStatus.PENDING and enrollment.source == "admin"
    assert enrollment.consent_version == app.config["CONSENT_VERSION"]
    assert (
        "MA-2026-000123" in enrollment.consent_text and "(617) 555-0134" in enrollment.consent_text
    )
    assert enrollment.consented_at is not None and enrollment.invited_at is not None
    (sms,) = texts(app)
    assert sms.to == "+16175550134" and "SI" in sms.body.upper() and "0123" in sms.body
    invite = session.exec(select(ConversationTurn)).one()
    assert invite.intent == "optin_invite" and invite.enrollment_id == enrollment.id

    page = text_of(client.get(response.headers["Location"]))
    assert "(617) 555-0134" in page and "pending" in page and "The opt-in text was sent" in page


def test_enrolling_on_an_existing_case_needs_no_case_details(app, client, session, staff, daytime):
    case = make_case(session, case_number="CS-777001")
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "cs-777001", "phone": "617.555.0199", "language": "en", "consent": "y"},
    )
    assert response.status_code == 302
    enrollment = session.exec(select(Enrollment)).one()
    assert (enrollment.case_id, enrollment.phone) == (case.id, "+16175550199")
    assert len(texts(app)) == 1


def test_a_number_already_active_on_the_case_is_not_enrolled_twice(app, client, session, staff):
    case = make_case(session, case_number="CS-777002")
    make_enrollment(session, case, "+16175550134")
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "CS-777002", "phone": "617-555-0134", "language": "en", "consent": "y"},
        follow_redirects=True,
    )
    assert "already active on this case; nothing changed" in text_of(response)
    assert count(session, Enrollment) == 1
    assert texts(app) == []


def payer_texts(app, client, body: str, phone: str = "+16175550134"):
    """An inbound text, signed as the console backend signs the phone simulator's."""
    import hashlib

    from tests.sms_helpers import inbound_params, post_signed

    token = hashlib.sha256(f"console:{app.config['SECRET_KEY']}".encode()).hexdigest()
    return post_signed(client, "/sms/inbound", inbound_params(body, phone), token)


def test_enrolling_again_a_number_that_opted_out_keeps_its_stop_and_texts_nothing(
    app, client, session, staff
):
    case = make_case(session, case_number="CS-777003")
    enrollment = make_stopped_enrollment(session, case)
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "CS-777003", "phone": "617-555-0134", "language": "en", "consent": "y"},
        follow_redirects=True,
    )
    page = text_of(response)
    assert "(617) 555-0134 opted out of texts on Mar 2, 2026" in page
    assert "only if the payer texts START" in page
    kept = reload(session, Enrollment, enrollment.id)
    assert (kept.status, kept.opted_out_at, kept.status_reason) == (
        EnrollmentStatus.OPTED_OUT,
        STOPPED_AT,
        "opted out by text",
    )
    assert count(session, Enrollment) == 1
    assert texts(app) == []


def test_a_number_that_texted_stop_while_on_no_case_is_enrolled_opted_out_until_start(
    app, client, session, staff, daytime
):
    assert "unsubscribed" in text_of(payer_texts(app, client, "STOP"))
    case = make_case(session, case_number="CS-777006")
    enroll = {"case_number": "CS-777006", "phone": "617-555-0134", "language": "en", "consent": "y"}
    page = text_of(post_form(client, "/admin/enroll", enroll, follow_redirects=True))
    assert "(617) 555-0134 opted out of texts on " in page
    assert "only if the payer texts START" in page
    added = session.exec(select(Enrollment).where(Enrollment.case_id == case.id)).one()
    assert added.status == EnrollmentStatus.OPTED_OUT and added.invited_at is None
    assert "START" in added.status_reason
    assert texts(app) == []

    payer_texts(app, client, "START")
    make_case(session, case_number="CS-777007")
    again = text_of(
        post_form(
            client, "/admin/enroll", {**enroll, "case_number": "CS-777007"}, follow_redirects=True
        )
    )
    assert "opted out" not in again
    assert [sms.to for sms in texts(app)] == ["+16175550134"]  # the invitation, at last


def test_a_number_that_opted_out_on_another_case_is_enrolled_opted_out_until_start(
    app, client, session, staff
):
    first = make_stopped_enrollment(session, make_case(session, case_number="CS-777004"))
    case = make_case(session, case_number="CS-777005")
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "CS-777005", "phone": "617-555-0134", "language": "en", "consent": "y"},
        follow_redirects=True,
    )
    assert "opted out of texts on Mar 2, 2026" in text_of(response)
    added = session.exec(select(Enrollment).where(Enrollment.case_id == case.id)).one()
    assert added.status == EnrollmentStatus.OPTED_OUT and added.invited_at is None
    assert reload(session, Enrollment, first.id).opted_out_at == STOPPED_AT
    assert texts(app) == []

    # Only the payer can undo a STOP: START opts the number back in on the case it had
    # confirmed. The case enrolled while it was opted out was never offered to the payer: it
    # waits for its invitation (due at once, sent in the payer's window) and the payer's YES.
    payer_texts(app, client, "START")
    session.expire_all()
    assert reload(session, Enrollment, first.id).status == EnrollmentStatus.ACTIVE
    added = reload(session, Enrollment, added.id)
    assert (added.status, added.invited_at) == (EnrollmentStatus.PENDING, None)
    assert added.invite_at is not None and added.invite_at <= utcnow()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("phone", "555-1234", "Enter a valid mobile number"),
        ("phone", "not a phone", "Enter a valid mobile number"),
        ("phone", "+44 20 7946 0958", "+44 20 7946 0958 is not a North American (+1) number"),
        ("phone", "+52 55 1234 5678", "texts go to +1 mobile numbers only"),
        ("phone", "888-555-0134", "(888) 555-0134 is a toll-free number, which cannot receive"),
        ("phone", "800-555-0134", "(800) 555-0134 is the agency&#39;s own number"),
        ("amount_due", "-25.00", "Amount due cannot be negative."),
        ("balance", "-1", "Balance cannot be negative."),
        ("balance", "12.345", "Balance has more than two decimals."),
        ("amount_due", "lots", "Amount due must be a dollar amount like 125.00."),
        ("payer_name", SCRIPT, "Payer name cannot contain &lt; or &gt;"),
        ("case_number", "CS 1; DROP", "Case number must be 1-32 letters, digits or dashes."),
        ("consent", "", "Tick the box only after the payer agreed to get texts."),
        ("next_due_date", "12/01/2030", "Not a valid date value."),
        ("next_due_date", "9999-12-31", "Next due date must be between Jan 1, 2000 and Dec 31"),
    ],
)
def test_bad_enrollment_input_is_explained_inline_and_writes_nothing(
    app, client, session, staff, field, value, message
):
    data = {**NEW_CASE, field: value}
    if field == "consent":
        del data["consent"]
    response = post_form(client, "/admin/enroll", data)
    assert response.status_code == 400
    page = text_of(response)
    assert message in page
    assert 'aria-invalid="true"' in page
    assert "<script>alert" not in page
    # What was typed is kept, so nothing is lost.
    assert 'value="Ana Rivera"' in page or field == "payer_name"
    assert count(session, Case) == count(session, Enrollment) == 0
    assert texts(app) == []


def test_a_new_case_needs_its_name_and_amounts(app, client, session, staff):
    data = {**NEW_CASE, "payer_name": "", "balance": ""}
    response = post_form(client, "/admin/enroll", data)
    assert response.status_code == 400
    assert "Payer name is needed for a new case." in text_of(response)
    assert "Balance ($) is needed for a new case." in text_of(response)
    assert count(session, Case) == 0


def autofocused(page: str) -> list[str]:
    """The ids of the elements a browser may focus when the page loads."""
    return re.findall(r'<(?:input|select|textarea)\b[^>]*\bautofocus\b[^>]*\bid="([^"]+)"', page)


def test_a_refused_form_puts_the_focus_on_its_first_field_with_an_error(client, session, staff):
    # The reply form sits below up to 500 messages: refused, it came back with the page at the
    # top, nothing focused, and its error out of sight.
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    assert autofocused(text_of(client.get(f"/admin/cases/{case.id}"))) == []
    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550134", "text": "   "},
        prefix="reply",
    )
    assert response.status_code == 400 and autofocused(text_of(response)) == ["reply-text"]

    data = {**NEW_CASE, "balance": "lots", "phone": "12"}
    response = post_form(client, "/admin/enroll", data)
    assert response.status_code == 400 and autofocused(text_of(response)) == ["balance"]


def test_an_unknown_case_without_details_is_explained(app, client, session, staff):
    response = post_form(
        client,
        "/admin/enroll",
        {"case_number": "CS-404", "phone": "6175550134", "language": "en", "consent": "y"},
    )
    assert response.status_code == 400
    assert "No case numbered CS-404" in text_of(response)
    assert count(session, Enrollment) == 0 and texts(app) == []


def test_new_case_details_for_an_existing_case_are_refused_not_ignored(app, client, session, staff):
    case = make_case(session, case_number="MA-2026-000123", balance_cents=5_000)
    response = post_form(client, "/admin/enroll", NEW_CASE)
    assert response.status_code == 400
    assert "already exists" in text_of(response)
    assert reload(session, Case, case.id).balance_cents == 5_000
    assert count(session, Enrollment) == 0 and texts(app) == []


def test_a_double_clicked_new_case_is_created_once_and_the_second_submit_says_so(
    app, client, session, staff, monkeypatch, daytime
):
    from cases import service as cases

    assert post_form(client, "/admin/enroll", NEW_CASE).status_code == 302
    # The second submission looked for the case before the first one committed it.
    real = cases.get_by_number
    calls = []

    def not_yet_committed(**kwargs):
        calls.append(kwargs)
        return None if len(calls) == 1 else real(**kwargs)

    monkeypatch.setattr(cases, "get_by_number", not_yet_committed)
    second = post_form(client, "/admin/enroll", NEW_CASE)
    assert second.status_code == 302
    page = text_of(client.get(second.headers["Location"]))
    assert "was already enrolled on this case and is waiting for the payer&#39;s YES" in page
    assert "The opt-in text was sent earlier; nothing changed." in page
    assert count(session, Case) == count(session, Enrollment) == 1
    assert len(texts(app)) == 1


def test_two_submissions_at_once_create_one_case_and_send_one_text(
    app, client, session, staff, monkeypatch, daytime
):
    import threading
    import time

    from tests.admin_helpers import csrf_token

    gateway = app.extensions["sms"]
    send = gateway.send
    release = threading.Event()

    def slow_send(**kwargs):
        release.wait(5)  # the first submission holds its transaction open here
        return send(**kwargs)

    monkeypatch.setattr(gateway, "send", slow_send)
    data = {**NEW_CASE, "csrf_token": csrf_token(client, "/admin/enroll")}
    cookie = client.get_cookie("session").value
    responses = []

    def submit():
        browser = app.test_client()
        browser.set_cookie("session", cookie)
        responses.append(browser.post("/admin/enroll", data=data))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    release.set()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [302, 302]
    assert count(session, Case) == count(session, Enrollment) == 1
    assert len(texts(app)) == 1


def test_the_same_new_case_submitted_again_is_not_refused(app, client, session, staff, daytime):
    assert post_form(client, "/admin/enroll", NEW_CASE).status_code == 302
    again = post_form(client, "/admin/enroll", NEW_CASE, follow_redirects=True)
    assert "already enrolled on this case" in text_of(again)
    assert count(session, Case) == count(session, Enrollment) == 1
    assert len(texts(app)) == 1


def test_the_enroll_form_labels_every_field(client, admin):
    page = text_of(client.get("/admin/enroll"))
    ids = re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', page)
    visible = [i for i in ids if "csrf" not in i]
    assert visible
    for field_id in visible:
        assert f'for="{field_id}"' in page, field_id


# --- Cases list ------------------------------------------------------------------------------


def test_cases_are_found_by_number_name_or_the_last_four_digits_of_a_phone(client, session, staff):
    ana = make_case(session, case_number="MA-1", payer_name="Ana Rivera")
    james = make_case(session, case_number="MA-2", payer_name="James Carter")
    make_enrollment(session, james, "+16175550777")

    def found(query):
        page = text_of(client.get("/admin/cases", query_string={"q": query}))
        return {n for n in ("MA-1", "MA-2") if f">{n}</a>" in page}

    assert found("rivera") == {"MA-1"}
    assert found("ma-2") == {"MA-2"}
    assert found("0777") == {"MA-2"}
    assert found("(617) 555-0777") == {"MA-2"}
    assert found("") == {"MA-1", "MA-2"}
    assert found("100%") == set()
    assert ana.id


def test_a_search_with_a_nul_character_ignores_it_instead_of_failing(client, session, staff):
    # PostgreSQL refuses a NUL in any string it is sent: the search was a 500 there.
    make_case(session, case_number="MA-1", payer_name="Ana Rivera")
    response = client.get("/admin/cases", query_string={"q": "Ana\x00"})
    assert response.status_code == 200
    assert ">MA-1</a>" in text_of(response)


def test_case_filters_pick_out_what_needs_attention(client, session, staff):
    today = utcnow().date()
    overdue = make_case(session, case_number="F-OVERDUE", next_due_date=today - timedelta(days=3))
    paid_up = make_case(
        session, case_number="F-PAIDUP", next_due_date=today - timedelta(days=3), balance_cents=0
    )
    opted = make_case(session, case_number="F-OPTED")
    make_enrollment(session, opted, "+16175550101", status=EnrollmentStatus.OPTED_OUT)
    pending = make_case(session, case_number="F-PENDING")
    make_enrollment(session, pending, "+16175550102", status=EnrollmentStatus.PENDING)
    carded = make_case(session, case_number="F-CARD")
    session.add(
        CardOnFile(
            case_id=carded.id,
            processor="sandbox",
            customer_id="cus_1",
            payment_method_id="pm_1",
            brand="visa",
            last4="4242",
            exp_month=12,
            exp_year=2030,
        )
    )
    waiting = make_case(session, case_number="F-HANDOFF")
    session.add(Handoff(case_id=waiting.id, phone="+16175550103"))
    session.commit()

    def shown(case_filter):
        page = text_of(client.get("/admin/cases", query_string={"filter": case_filter}))
        return {n for n in re.findall(r">(F-[A-Z]+)</a>", page)}

    assert shown("overdue") == {"F-OVERDUE"}
    assert shown("opted_out") == {"F-OPTED"}
    assert shown("pending") == {"F-PENDING"}
    assert shown("handoff") == {"F-HANDOFF"}
    assert shown("no_card") == {"F-OVERDUE", "F-PAIDUP", "F-OPTED", "F-PENDING", "F-HANDOFF"}
    assert overdue.id and paid_up.id


def test_the_case_list_is_paginated(session, app):
    for n in range(30):
        make_case(session, case_number=f"P-{n:03d}")
    first = search_cases(session=session, page=1, today=utcnow().date(), per_page=25)
    second = search_cases(session=session, page=2, today=utcnow().date(), per_page=25)
    assert (first.total, first.pages, len(first.rows), len(second.rows)) == (30, 2, 25, 5)
    assert first.rows[0].case.case_number == "P-000"
    assert second.rows[-1].case.case_number == "P-029"


def test_the_case_list_shows_only_the_last_four_digits_of_phones(client, session, staff):
    make_enrollment(session, make_case(session, case_number="L-1"), "+16175550134")
    page = text_of(client.get("/admin/cases"))
    assert "…0134" in page and "617" not in page.split("<table")[1]


def test_a_credit_reads_the_same_in_the_case_list_and_on_the_case_page(client, session, staff):
    case = make_case(session, case_number="CR-1", balance_cents=-5_000)
    owing = make_case(session, case_number="CR-2", balance_cents=125_000)
    listed = text_of(client.get("/admin/cases?q=CR-")).split("<table")[1]
    assert "<td>$50.00 in credit</td>" in listed and "-$50.00" not in listed
    assert "<td>$1,250.00</td>" in listed
    facts = text_of(client.get(f"/admin/cases/{case.id}")).split('class="facts"')[1]
    assert "<dd>$50.00 in credit" in facts and "-$50.00" not in facts
    facts = text_of(client.get(f"/admin/cases/{owing.id}")).split('class="facts"')[1]
    assert "<dd>$1,250.00</dd>" in facts


# --- Case page -------------------------------------------------------------------------------


def test_the_case_page_shows_the_conversation_in_the_agency_time_zone(client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    at = datetime(2026, 1, 15, 15, 5, tzinfo=UTC)  # 10:05 AM in New York
    turn(session, case, "BAL", intent="balance", created_at=at)
    turn(
        session,
        case,
        "Case ending 1001: balance $1,000.00.",
        Direction.OUTBOUND,
        delivery_status="delivered",
        intent="balance",
        created_at=at + timedelta(seconds=2),
    )
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    thread = page.split('id="timeline"')[1].split("</ol>")[0]
    assert thread.index("BAL") < thread.index("balance $1,000.00")
    assert 'class="turn inbound' in thread and 'class="turn outbound' in thread
    assert "Jan 15, 2026 10:05 AM EST" in thread
    assert "delivered" in thread and "balance" in thread


def test_the_case_page_shows_every_time_in_the_cases_own_time_zone(client, session, staff):
    case = make_case(session, timezone="America/Los_Angeles")
    make_enrollment(session, case, "+14155550134")
    at = datetime(2026, 1, 15, 15, 5, tzinfo=UTC)  # 7:05 AM in Los Angeles, 10:05 AM in New York
    turn(session, case, "BAL", intent="balance", created_at=at)
    session.add(
        Payment(
            case_id=case.id,
            amount_cents=5_000,
            idempotency_key="tz-test",
            status=PaymentStatus.SUCCEEDED,
            created_at=at,
            succeeded_at=at,
        )
    )
    session.add(
        Reminder(
            case_id=case.id, kind=ReminderKind.DUE_SOON, cycle="2026-01", send_at=at, status="sent"
        )
    )
    session.add(Appointment(case_id=case.id, starts_at=at))
    session.commit()
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert "times in America/Los_Angeles" in page
    for section in ("timeline", "payments", "reminders", "appointments"):
        part = page.split(f'id="{section}"')[1].split("</section>")[0]
        assert "Jan 15, 2026 7:05 AM PST" in part, section
        assert "EST" not in part, section
    assert "Date and time in the case's time zone, America/Los_Angeles." in page


@pytest.fixture
def chicago_agency(config):
    config["DEFAULT_TIMEZONE"] = "America/Chicago"


@pytest.mark.parametrize("zone", [None, "Mars/Olympus_Mons"])
def test_a_case_without_a_valid_time_zone_is_shown_in_the_agencys(
    chicago_agency, client, session, staff, zone
):
    case = make_case(session, timezone=zone)
    turn(session, case, "BAL", created_at=datetime(2026, 1, 15, 15, 5, tzinfo=UTC))
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert "times in America/Chicago (the agency's)" in page
    assert "Jan 15, 2026 9:05 AM CST" in page.split('id="timeline"')[1]


def test_a_case_without_a_zone_is_shown_and_entered_in_its_payers_zone(app, client, session, staff):
    # The payer's texts (receipts, reminders, APPT) give times by the number's zone when the case
    # names none: a 415 number reads Pacific time, so the page must too, not the agency's.
    case = make_case(session, timezone=None)
    make_enrollment(session, case, "+14155550134")
    at = datetime(2026, 12, 1, 5, 46, tzinfo=UTC)  # Nov 30 9:46 PM in San Francisco
    turn(session, case, "PAY 250", intent="pay", created_at=at)
    session.add(
        Payment(
            case_id=case.id,
            amount_cents=25_000,
            idempotency_key="payer-zone",
            status=PaymentStatus.SUCCEEDED,
            created_at=at,
            succeeded_at=at,
        )
    )
    session.add(
        Reminder(
            case_id=case.id, kind=ReminderKind.DUE_SOON, cycle="2026-12", send_at=at, status="sent"
        )
    )
    session.add(Appointment(case_id=case.id, starts_at=at, status="canceled"))
    session.add(Handoff(case_id=case.id, phone="+14155550134", created_at=at))
    session.commit()

    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert "times in America/Los_Angeles (where (415) 555-0134 is" in page
    for section in ("timeline", "payments", "reminders", "appointments"):
        part = page.split(f'id="{section}"')[1].split("</section>")[0]
        assert "Nov 30, 2026 9:46 PM PST" in part, section
        assert "EST" not in part, section
    assert "Date and time in the case's time zone, America/Los_Angeles." in page
    inbox = text_of(client.get("/admin/handoffs"))
    assert "asked Nov 30, 2026 9:46 PM PST" in inbox

    day = (utcnow() + timedelta(days=10)).date()
    added = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "court_hearing", "day": day.isoformat(), "time": "09:00"},
        prefix="appt",
    )
    assert added.status_code == 302, text_of(added)
    appointment = session.exec(select(Appointment).order_by(Appointment.id.desc())).first()
    local = appointment.starts_at.astimezone(ZoneInfo("America/Los_Angeles"))
    assert (local.date(), local.hour, local.minute) == (day, 9, 0)
    (answer,) = replies(payer_texts(app, client, "APPT", phone="+14155550134"))
    assert f"{day:%b} {day.day} at 9:00 AM" in answer


def test_a_case_is_shown_by_the_clock_of_its_first_active_number_as_reminders_are_planned(
    chicago_agency, session
):
    from admin.service import case_zones

    pending_first = make_case(session, timezone=None)
    make_enrollment(session, pending_first, "+16175550134", status=EnrollmentStatus.PENDING)
    make_enrollment(session, pending_first, "+14155550134")
    only_pending = make_case(session, timezone=None)
    make_enrollment(session, only_pending, "+13035550134", status=EnrollmentStatus.PENDING)
    nobody = make_case(session, timezone=None)
    own_zone = make_case(session, timezone="America/Phoenix")
    make_enrollment(session, own_zone, "+14155550134")

    zones = case_zones(
        session=session,
        cases=[pending_first, only_pending, nobody, own_zone],
        default="America/Chicago",
    )
    assert zones == {
        pending_first.id: "America/Los_Angeles",
        only_pending.id: "America/Denver",
        nobody.id: "America/Chicago",
        own_zone.id: "America/Phoenix",
    }


def test_an_appointment_is_entered_in_the_cases_time_zone(client, session, staff):
    case = make_case(session, timezone="America/Denver")
    day = (utcnow() + timedelta(days=10)).date()
    added = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "case_conference", "day": day.isoformat(), "time": "09:30"},
        prefix="appt",
    )
    assert added.status_code == 302, text_of(added)
    appointment = session.exec(select(Appointment)).one()
    local = appointment.starts_at.astimezone(ZoneInfo("America/Denver"))
    assert (local.date(), local.hour, local.minute) == (day, 9, 30)

    moved = post_form(
        client,
        f"/admin/appointments/{appointment.id}/move",
        {"day": day.isoformat(), "time": "14:00"},
        prefix=f"move{appointment.id}",
    )
    assert moved.status_code == 302
    local = reload(session, Appointment, appointment.id).starts_at.astimezone(
        ZoneInfo("America/Denver")
    )
    assert (local.hour, local.minute) == (14, 0)


def test_the_handoff_queue_shows_each_request_in_its_cases_time_zone(client, session, staff):
    at = datetime(2026, 1, 15, 15, 5, tzinfo=UTC)
    for number, zone in (("W-1", "America/Los_Angeles"), ("E-1", "America/New_York")):
        case = make_case(session, case_number=number, timezone=zone)
        session.add(Handoff(case_id=case.id, phone="+16175550134", created_at=at))
    session.commit()
    inbox = text_of(client.get("/admin/handoffs"))
    assert "asked Jan 15, 2026 7:05 AM PST" in inbox
    assert "asked Jan 15, 2026 10:05 AM EST" in inbox


def test_the_case_page_shows_reminders_with_their_reasons_and_consent_records(
    client, session, staff
):
    case = make_case(session)
    make_enrollment(session, case, consent_text="I agree to texts v7", consent_version="v7")
    for kind, status, reason in [
        (ReminderKind.DUE_SOON, ReminderStatus.SENT, None),
        (ReminderKind.DUE_TODAY, ReminderStatus.SKIPPED, "paid"),
        (ReminderKind.OVERDUE, ReminderStatus.DEFERRED, "quiet_hours"),
        (ReminderKind.APPOINTMENT, ReminderStatus.SCHEDULED, None),
        (ReminderKind.APPOINTMENT_MOVED, ReminderStatus.SENT, None),
    ]:
        session.add(
            Reminder(
                case_id=case.id,
                kind=kind,
                cycle="2026-01",
                send_at=utcnow(),
                status=status,
                reason=reason,
            )
        )
    session.commit()
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    reminders = page.split('id="reminders"')[1].split("</section>")[0]
    for word in ("sent", "skipped", "paid", "deferred", "quiet hours", "scheduled"):
        assert word in reminders
    for label in ("Due soon", "Due today", "Overdue", "Appointment reminder", "Appointment moved"):
        assert label in reminders
    enrollments = page.split('id="enrollments"')[1].split("</section>")[0]
    assert "I agree to texts v7" in enrollments and "v7" in enrollments


def conversation(session, case, count: int) -> None:
    """`count` turns a minute apart, "message 0001" the oldest."""
    start = datetime(2026, 1, 1, 15, tzinfo=UTC)
    session.add_all(
        ConversationTurn(
            case_id=case.id,
            phone="+16175550134",
            direction=Direction.INBOUND,
            body=f"message {n:04d}",
            created_at=start + timedelta(minutes=n),
        )
        for n in range(1, count + 1)
    )
    session.commit()


def test_the_conversation_is_read_a_page_at_a_time_newest_page_first(session):
    case = make_case(session)
    conversation(session, case, 7)

    def bodies(page: int) -> tuple[list[str], int, int]:
        detail = case_detail(session=session, case_id=case.id, turns_page=page, per_page=3)
        return [t.body[-1] for t in detail.turns], detail.turns_page, detail.turns_pages

    assert bodies(1) == (["5", "6", "7"], 1, 3)
    assert bodies(2) == (["2", "3", "4"], 2, 3)
    assert bodies(3) == (["1"], 3, 3)
    assert bodies(99) == (["1"], 3, 3)  # past the oldest page: the oldest page
    assert bodies(-4) == (["5", "6", "7"], 1, 3)


def test_older_messages_are_reached_from_the_case_page(client, session, staff):
    case = make_case(session)
    conversation(session, case, TIMELINE_PAGE + 3)
    latest = text_of(client.get(f"/admin/cases/{case.id}"))
    thread = latest.split('id="timeline"')[1].split("</ol>")[0]
    assert "message 0004" in thread and f"message {TIMELINE_PAGE + 3:04d}" in thread
    assert "message 0003" not in thread
    assert f"Showing {TIMELINE_PAGE} of {TIMELINE_PAGE + 3} messages (the latest)" in latest
    assert f'href="/admin/cases/{case.id}?page=2#conversation" rel="next"' in latest
    assert 'rel="prev"' not in latest

    older = text_of(client.get(f"/admin/cases/{case.id}?page=2"))
    thread = older.split('id="timeline"')[1].split("</ol>")[0]
    assert re.findall(r"message \d{4}", thread) == [
        "message 0001",
        "message 0002",
        "message 0003",
    ]
    assert "page 2 of 2, counting back from the latest" in older
    assert f'href="/admin/cases/{case.id}?page=1#conversation" rel="prev"' in older
    assert 'id="older-messages"' not in older
    assert client.get(f"/admin/cases/{case.id}?page=9999999999999999999999").status_code == 200


def thread_of(page: str) -> list[str]:
    """The texts in a case page's conversation, oldest first."""
    thread = page.split('id="timeline"')[1].split("</ol>")[0]
    return re.findall(r'<div class="body">(.*?)</div>', thread, re.S)


def test_each_case_of_a_phone_shows_the_texts_about_no_one_case_and_only_its_own_others(
    app, client, session, staff
):
    first = make_case(session, case_number="CS-004821", balance_cents=100_000)
    second = make_case(session, case_number="CS-007310", balance_cents=5_000)
    payer_texts(app, client, "BAL")  # not on any case yet: nobody's conversation
    for case in (first, second):
        make_enrollment(session, case)
    for body in ("HELP", "BAL", "7310", "STOP", "START"):
        payer_texts(app, client, body)
    later = make_case(session, case_number="CS-005555")
    make_enrollment(session, later)

    on_first = thread_of(text_of(client.get(f"/admin/cases/{first.id}")))
    on_second = thread_of(text_of(client.get(f"/admin/cases/{second.id}")))
    both = ["HELP", "BAL", "STOP", "START"]
    for body in both:
        assert on_first.count(body) == on_second.count(body) == 1, body
    for thread in (on_first, on_second):
        assert any("more than one case" in t for t in thread)  # the question, on both
        assert any("unsubscribed" in t for t in thread)
        assert any("subscribed again" in t for t in thread)
    assert "7310" in on_second and any("$50.00" in t for t in on_second)
    assert "7310" not in on_first and not any("$50.00" in t for t in on_first)
    assert len(on_first) == 8 and len(on_second) == 10
    enrollments = text_of(client.get(f"/admin/cases/{first.id}")).split('id="enrollments"')[1]
    assert "opted back in by text" in enrollments.split("</section>")[0]
    # Enrolled after all that: none of it is this case's.
    assert "No messages yet." in text_of(client.get(f"/admin/cases/{later.id}"))


def test_a_cases_pages_count_its_phones_texts_about_no_one_case_from_its_enrollment_on(
    session,
):
    case, other = make_case(session), make_case(session)
    start = datetime(2026, 1, 1, 15, tzinfo=UTC)
    make_enrollment(session, case, created_at=start + timedelta(minutes=2))
    make_enrollment(session, other, created_at=start)

    def at(minute: int, case_id: int | None, body: str, phone: str = "+16175550134"):
        session.add(
            ConversationTurn(
                case_id=case_id,
                phone=phone,
                direction=Direction.INBOUND,
                body=body,
                created_at=start + timedelta(minutes=minute),
            )
        )

    at(1, None, "before this case")
    at(3, case.id, "own 1")
    at(4, None, "phone 1")
    at(5, other.id, "the other case's")
    at(6, None, "another phone's", phone="+16175550199")
    at(7, case.id, "own 2")
    at(8, None, "phone 2")
    at(9, case.id, "own 3")
    session.commit()

    def bodies(page: int) -> tuple[list[str], int, int]:
        detail = case_detail(session=session, case_id=case.id, turns_page=page, per_page=2)
        return [t.body for t in detail.turns], detail.turns_total, detail.turns_pages

    assert bodies(1) == (["phone 2", "own 3"], 5, 3)
    assert bodies(2) == (["phone 1", "own 2"], 5, 3)
    assert bodies(3) == (["own 1"], 5, 3)
    other_bodies = [t.body for t in case_detail(session=session, case_id=other.id).turns]
    assert other_bodies == ["before this case", "phone 1", "the other case's", "phone 2"]


def test_an_unknown_case_is_a_clear_404(client, staff):
    response = client.get("/admin/cases/999")
    assert response.status_code == 404 and "Not found" in text_of(response)


@pytest.mark.parametrize("huge", [str(2**64), str(2**31), "9" * 40])
def test_an_id_too_big_for_any_row_is_a_404_not_a_500(client, session, admin, huge):
    for url in (f"/admin/cases/{huge}", f"/admin/cases/{huge}/export.csv"):
        assert client.get(url).status_code == 404, url
    for url in (
        f"/admin/cases/{huge}/reply",
        f"/admin/cases/{huge}/card-link",
        f"/admin/cases/{huge}/appointments",
        f"/admin/appointments/{huge}/move",
        f"/admin/appointments/{huge}/cancel",
        f"/admin/payments/{huge}/refund",
        f"/admin/handoffs/{huge}/close",
        f"/admin/users/{huge}/role",
        f"/admin/users/{huge}/unlock",
    ):
        assert post_form(client, url).status_code == 404, url


def test_the_largest_possible_id_is_looked_up_like_any_other(client, session, admin):
    from db import ROW_ID_MAX

    response = client.get(f"/admin/cases/{ROW_ID_MAX}")
    assert response.status_code == 404 and "Not found" in text_of(response)
    cancel = post_form(client, f"/admin/appointments/{ROW_ID_MAX}/cancel", prefix="cancel")
    assert cancel.status_code == 404


# --- Staff replies and handoffs --------------------------------------------------------------


def test_a_staff_reply_goes_out_as_a_text_logged_as_theirs_and_answers_the_handoff(
    app, client, session, staff
):
    case = make_case(session, payer_name="Ana Rivera")
    make_enrollment(session, case, "+16175550134")
    agent = turn(session, case, "AGENT please", intent="agent")
    session.add(Handoff(case_id=case.id, phone="+16175550134", turn_id=agent.id))
    session.commit()

    inbox = text_of(client.get("/admin/handoffs"))
    assert "AGENT please" in inbox and case.case_number in inbox

    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550134", "text": "Hi Ana, we got your message."},
        prefix="reply",
    )
    assert response.status_code == 302
    (sms,) = texts(app)
    assert sms.to == "+16175550134"
    assert sms.body == "Demo County Child Support: Hi Ana, we got your message."
    reply = session.exec(
        select(ConversationTurn).where(ConversationTurn.direction == Direction.OUTBOUND)
    ).one()
    assert reply.staff_user_id == staff.id and reply.intent == "staff_reply"
    handoff = session.exec(select(Handoff)).one()
    assert handoff.status == HandoffStatus.ANSWERED and handoff.answered_by == staff.id
    assert "No one is waiting." in text_of(client.get("/admin/handoffs"))
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert "by staff@agency.test" in page


def test_a_reply_twilio_did_not_answer_is_flagged_as_maybe_sent_not_as_failed(
    app, client, session, staff
):
    from bot.sms import Failure, SendResult

    class NoAnswer:
        def send(self, *, to, body, status_callback=None):
            return SendResult(ok=False, error_message="ReadTimeout", failure=Failure.UNKNOWN)

    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    app.extensions["sms"] = NoAnswer()
    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550134", "text": "We got your message."},
        prefix="reply",
    )
    page = text_of(client.get(response.headers["Location"]))
    assert "may or may not have gone" in page and "could not be sent" not in page
    reply = session.exec(
        select(ConversationTurn).where(ConversationTurn.direction == Direction.OUTBOUND)
    ).one()
    assert reply.delivery_status == "unknown"


def test_a_reply_answers_only_the_handoff_of_the_number_it_went_to(app, client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    make_enrollment(session, case, "+16175550199")
    for number in ("+16175550134", "+16175550199"):
        session.add(Handoff(case_id=case.id, phone=number))
    session.commit()
    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550199", "text": "We will call you today."},
        prefix="reply",
    )
    assert response.status_code == 302
    session.expire_all()
    status = {h.phone: h.status for h in session.exec(select(Handoff)).all()}
    assert status == {"+16175550134": HandoffStatus.WAITING, "+16175550199": HandoffStatus.ANSWERED}
    inbox = text_of(client.get("/admin/handoffs"))
    assert "(617) 555-0134" in inbox and "(617) 555-0199" not in inbox


def waiting_on(session, case, number="+16175550134") -> Handoff:
    handoff = Handoff(case_id=case.id, phone=number)
    session.add(handoff)
    session.commit()
    return handoff


def test_staff_close_a_handoff_without_texting_and_it_leaves_the_queue(app, client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    handoff = waiting_on(session, case)
    assert '<span class="badge" aria-label="1 waiting">' in text_of(client.get("/admin/handoffs"))

    response = post_form(
        client, f"/admin/handoffs/{handoff.id}/close", prefix="close", follow_redirects=True
    )
    assert response.status_code == 200
    assert "The request from (617) 555-0134 is closed; no text was sent." in text_of(response)
    assert "No one is waiting." in text_of(response)
    assert 'class="badge"' not in text_of(response)
    closed = reload(session, Handoff, handoff.id)
    assert (closed.status, closed.answered_by) == (HandoffStatus.CLOSED, staff.id)
    assert closed.answered_at is not None
    assert texts(app) == []
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert 'id="waiting-handoffs"' not in page
    history = page.split('id="handoffs"')[1].split("</section>")[0]
    assert "closed" in history and "by staff@agency.test" in history


def test_every_waiting_request_is_reachable_from_the_inbox_the_newest_on_its_last_page(
    client, session, staff
):
    case = make_case(session)
    start = datetime(2026, 1, 15, 15, 0, tzinfo=UTC)
    # Some asked in the same second: paging must neither skip nor repeat them.
    handoffs = [
        Handoff(case_id=case.id, phone="+16175550134", created_at=start + timedelta(minutes=n // 3))
        for n in range(205)
    ]
    session.add_all(handoffs)
    session.commit()
    newest = max(handoffs, key=lambda h: (h.created_at, h.id))

    first = text_of(client.get("/admin/handoffs"))
    assert '<span class="badge" aria-label="205 waiting">' in first
    assert "Showing requests 1–100 of the 205 waiting, oldest first" in first
    assert "105 newer ones are on the next pages" in first
    assert 'href="/admin/handoffs?page=3" id="newest-requests"' in first

    close = re.compile(r'action="/admin/handoffs/(\d+)/close')
    seen = []
    for page in (1, 2, 3):
        seen += [
            int(found)
            for found in close.findall(text_of(client.get(f"/admin/handoffs?page={page}")))
        ]
    assert sorted(seen) == sorted(h.id for h in handoffs)
    last = text_of(client.get("/admin/handoffs?page=3"))
    assert "Showing requests 201–205 of the 205 waiting" in last
    assert f"/admin/handoffs/{newest.id}/close" in last
    beyond = text_of(client.get("/admin/handoffs?page=99"))
    assert "Page 3 of 3" in beyond and f"/admin/handoffs/{newest.id}/close" in beyond


def test_closing_from_a_later_inbox_page_returns_to_that_page(client, session, staff):
    from admin.service import INBOX_PAGE

    case = make_case(session)
    session.add_all(Handoff(case_id=case.id, phone="+16175550134") for _ in range(INBOX_PAGE + 1))
    session.commit()
    page = text_of(client.get("/admin/handoffs?page=2"))
    (action,) = re.findall(r'action="(/admin/handoffs/\d+/close[^"]*)"', page)
    assert action.endswith("?next=/admin/handoffs?page%3D2")
    response = post_form(client, action.replace("&amp;", "&"), prefix="close")
    assert response.headers["Location"] == "/admin/handoffs?page=2"


def test_closing_from_the_case_page_returns_to_it(client, session, staff):
    case = make_case(session)
    handoff = waiting_on(session, case)
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    action = f"/admin/handoffs/{handoff.id}/close?next=/admin/cases/{case.id}"
    assert f'action="{action}"' in page
    response = post_form(client, action, prefix="close")
    assert response.headers["Location"] == f"/admin/cases/{case.id}"


def test_a_handoff_already_answered_is_not_closed_again(client, session, staff):
    case = make_case(session)
    handoff = waiting_on(session, case)
    answered_at = utcnow()
    handoff.status, handoff.answered_at = HandoffStatus.ANSWERED, answered_at
    session.add(handoff)
    session.commit()
    response = post_form(
        client, f"/admin/handoffs/{handoff.id}/close", prefix="close", follow_redirects=True
    )
    assert "That request is already answered; nothing changed." in text_of(response)
    again = reload(session, Handoff, handoff.id)
    assert (again.status, again.answered_by) == (HandoffStatus.ANSWERED, None)
    assert client.get("/admin/handoffs/999/close").status_code == 405
    assert post_form(client, "/admin/handoffs/999/close", prefix="close").status_code == 404


def test_a_number_that_cannot_be_texted_keeps_a_way_to_close_its_request(client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134", status=EnrollmentStatus.UNDELIVERABLE)
    handoff = waiting_on(session, case)
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert "send-reply" not in page  # no number on the case can be texted
    waiting = page.split('id="waiting-handoffs"')[1].split("</div>")[0]
    assert "That number cannot be texted now" in waiting
    assert f"/admin/handoffs/{handoff.id}/close" in waiting and "Close without texting" in waiting


def test_a_reply_too_long_for_two_texts_is_refused_and_kept(app, client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    long_text = "Please call us about your payment plan. " * 10
    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550134", "text": long_text},
        prefix="reply",
    )
    assert response.status_code == 400
    assert "too long for 2 text messages" in text_of(response)
    assert long_text.strip()[:60] in text_of(response)
    assert texts(app) == [] and count(session, ConversationTurn) == 0


def test_a_nul_character_typed_into_a_form_is_explained_at_its_field_and_nothing_is_sent(
    app, client, session, staff
):
    # A NUL cannot be stored by PostgreSQL: the reply went out and the page was a 500.
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550134", "text": "Call us\x00 today"},
        prefix="reply",
    )
    assert response.status_code == 400
    assert 'id="reply-text-error"' in text_of(response)
    assert "invisible NUL character" in text_of(response)
    assert texts(app) == [] and count(session, ConversationTurn) == 0

    day = (utcnow() + timedelta(days=3)).date().isoformat()
    response = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "court_hearing", "day": day, "time": "09:00", "location": "Room\x00 4"},
        prefix="appt",
    )
    assert response.status_code == 400 and 'id="appt-location-error"' in text_of(response)
    assert count(session, Appointment) == 0


@pytest.mark.parametrize(
    ("path", "prefix", "fields"),
    [
        ("reply", "reply", {"phone": "+16175550134", "text": "Call us today"}),
        ("card-link", "card", {"phone": "+16175550134"}),
    ],
)
def test_a_text_form_sent_twice_texts_the_payer_once(
    app, client, session, staff, path, prefix, fields
):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    page = client.get(f"/admin/cases/{case.id}").get_data(as_text=True)
    nonce = re.search(rf'name="{prefix}-nonce"[^>]*value="([^"]+)"', page).group(1)
    for _ in range(2):  # a double-click, or the form sent again from the browser's history
        response = post_form(
            client, f"/admin/cases/{case.id}/{path}", {**fields, "nonce": nonce}, prefix=prefix
        )
        assert response.status_code == 302
    assert len(texts(app)) == 1 and count(session, ConversationTurn) == 1
    assert "it was not sent again" in text_of(client.get(f"/admin/cases/{case.id}"))
    # The page offers a fresh form: the next reply goes.
    page = client.get(f"/admin/cases/{case.id}").get_data(as_text=True)
    fresh = re.search(rf'name="{prefix}-nonce"[^>]*value="([^"]+)"', page).group(1)
    assert fresh != nonce
    post_form(client, f"/admin/cases/{case.id}/{path}", {**fields, "nonce": fresh}, prefix=prefix)
    assert len(texts(app)) == 2


def test_a_reply_twilio_refused_may_be_sent_again_from_the_same_form(
    app, client, session, staff, monkeypatch
):
    from bot.sms import Failure, SendResult

    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    fields = {"phone": "+16175550134", "text": "Call us today", "nonce": "same-form"}
    gateway = app.extensions["sms"]
    real_send = gateway.send
    refused = SendResult(ok=False, error_code=20429, failure=Failure.TRANSIENT)  # too many
    monkeypatch.setattr(gateway, "send", lambda **kwargs: refused)
    post_form(client, f"/admin/cases/{case.id}/reply", fields, prefix="reply")
    monkeypatch.setattr(gateway, "send", real_send)
    post_form(client, f"/admin/cases/{case.id}/reply", fields, prefix="reply")
    assert len(texts(app)) == 1  # the second try went: the first never reached Twilio


def test_a_reply_to_an_opted_out_number_is_refused(app, client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134", status=EnrollmentStatus.OPTED_OUT)
    response = post_form(
        client,
        f"/admin/cases/{case.id}/reply",
        {"phone": "+16175550134", "text": "Hello"},
        prefix="reply",
    )
    assert response.status_code == 400
    assert texts(app) == [] and count(session, ConversationTurn) == 0


def test_send_card_link_texts_a_signed_link(app, client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    response = post_form(
        client, f"/admin/cases/{case.id}/card-link", {"phone": "+16175550134"}, prefix="card"
    )
    assert response.status_code == 302
    (sms,) = texts(app)
    assert "http://paytext.test/pay/card/" in sms.body
    logged = session.exec(select(ConversationTurn)).one()
    assert logged.intent == "card_link" and logged.staff_user_id == staff.id


# --- Refunds ---------------------------------------------------------------------------------


def paid(app, session, case, cents=25_000) -> Payment:
    """A payment charged through the sandbox processor, as the bot would make it."""
    from billing.cards import attach_test_card
    from billing.service import enqueue_charge

    with app.app_context():
        card = attach_test_card(
            session=session,
            gateway=app.extensions["payments"],
            case=case,
            number="4242424242424242",
            exp_month=12,
            exp_year=2030,
        )
        payment = Payment(
            case_id=case.id,
            card_id=card.id,
            amount_cents=cents,
            idempotency_key=f"test-{case.id}",
            processor="sandbox",
        )
        session.add(payment)
        session.commit()
        enqueue_charge(payment_id=payment.id)
    payment = reload(session, Payment, payment.id)
    assert payment.status == PaymentStatus.SUCCEEDED
    return payment


def test_an_admin_refunds_part_of_a_payment(app, client, session, admin):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    payment = paid(app, session, case)
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert f"/admin/payments/{payment.id}/refund" in page
    response = post_form(
        client,
        f"/admin/payments/{payment.id}/refund",
        {"amount": "50.00"},
        prefix=f"refund{payment.id}",
    )
    assert response.status_code == 302, text_of(response)
    (refund,) = session.exec(select(Refund)).all()
    assert refund.amount_cents == 5_000 and refund.admin_user_id == admin.id


@pytest.mark.parametrize(
    ("amount", "message"),
    [("-5", "cannot be negative"), ("0", "must be more than $0.00"), ("300.00", "At most $250.00")],
)
def test_a_bad_refund_amount_is_explained_and_refunds_nothing(
    app, client, session, admin, amount, message
):
    case = make_case(session)
    payment = paid(app, session, case)
    response = post_form(
        client,
        f"/admin/payments/{payment.id}/refund",
        {"amount": amount},
        prefix=f"refund{payment.id}",
    )
    assert response.status_code == 400
    assert message in text_of(response)
    assert count(session, Refund) == 0


# --- Appointments ----------------------------------------------------------------------------


def test_appointments_are_added_moved_and_canceled(client, session, staff):
    case = make_case(session)
    make_enrollment(session, case)
    day = (utcnow() + timedelta(days=10)).date()
    added = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "court_hearing", "day": day.isoformat(), "time": "09:30", "location": "Room 5"},
        prefix="appt",
    )
    assert added.status_code == 302, text_of(added)
    appointment = session.exec(select(Appointment)).one()
    first_time = appointment.starts_at
    local = first_time.astimezone(ZoneInfo("America/New_York"))
    assert (local.date(), local.hour, local.minute) == (day, 9, 30)

    later = day + timedelta(days=1)
    moved = post_form(
        client,
        f"/admin/appointments/{appointment.id}/move",
        {"day": later.isoformat(), "time": "14:00"},
        prefix=f"move{appointment.id}",
    )
    assert moved.status_code == 302
    assert reload(session, Appointment, appointment.id).starts_at == first_time + timedelta(
        days=1, hours=4, minutes=30
    )

    canceled = post_form(client, f"/admin/appointments/{appointment.id}/cancel", prefix="cancel")
    assert canceled.status_code == 302
    assert reload(session, Appointment, appointment.id).status == "canceled"


def test_an_appointment_sent_twice_is_added_once_and_its_payer_reminded_once(
    client, session, staff
):
    case = make_case(session)
    make_enrollment(session, case)
    day = (utcnow() + timedelta(days=10)).date()
    form = {"kind": "court_hearing", "day": day.isoformat(), "time": "09:30", "location": "Room 5"}
    url = f"/admin/cases/{case.id}/appointments"
    assert post_form(client, url, form, prefix="appt").status_code == 302

    again = post_form(client, url, form, prefix="appt", follow_redirects=True)
    assert "That appointment was already scheduled (sent twice?); nothing changed." in text_of(
        again
    )
    assert count(session, Appointment) == 1
    reminders = session.exec(select(Reminder).where(Reminder.kind == ReminderKind.APPOINTMENT))
    assert len(reminders.all()) == 1
    # Another time, or another kind at the same time, is another appointment.
    assert post_form(client, url, {**form, "time": "10:30"}, prefix="appt").status_code == 302
    assert (
        post_form(client, url, {**form, "kind": "case_conference"}, prefix="appt").status_code
        == 302
    )
    assert count(session, Appointment) == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Within the form's 200 characters, but the reminder would take three texts.
        (
            "location",
            "Superior Court of California, County of San Bernardino, Family Law "
            "Division, 351 North Arrowhead Avenue, Department S36, San Bernardino, CA 92415",
        ),
        # One ó makes the reminder UCS-2: 70 characters a segment.
        ("location", "Juzgado de Familia, Sala 3, Edificio Ramón"),
        (
            "video_link",
            "https://teams.microsoft.com/l/meetup-join/19%3ameeting_NjY4ZDk3"
            "YTMtYjI4Ni00ZjQ1LWE5ZjgtZDY0ZTI1ZjkzYWQ5%40thread.v2/0?context=%7b%22Tid%22%3a%22"
            "72f988bf-86f1-41af-91ab-2d7cd011db47%22%7d",
        ),
    ],
)
def test_an_appointment_whose_reminder_would_not_fit_in_two_texts_is_refused(
    client, session, staff, field, value
):
    case = make_case(session)
    day = (utcnow() + timedelta(days=10)).date()
    fields = {"kind": "court_hearing", "day": day.isoformat(), "time": "09:30", field: value}
    response = post_form(client, f"/admin/cases/{case.id}/appointments", fields, prefix="appt")
    assert response.status_code == 400
    assert "too long for 2 text messages" in text_of(response)
    assert count(session, Appointment) == 0


def test_an_appointment_in_the_past_is_refused(client, session, staff):
    case = make_case(session)
    response = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "case_conference", "day": "2020-01-01", "time": "09:00"},
        prefix="appt",
    )
    assert response.status_code == 400
    assert "must be in the future" in text_of(response)
    assert count(session, Appointment) == 0


def test_an_appointment_in_year_9999_is_refused_when_added_or_moved(client, session, staff):
    case = make_case(session)
    added = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "court_hearing", "day": "9999-12-31", "time": "23:00"},
        prefix="appt",
    )
    assert added.status_code == 400
    assert "Date must be between Jan 1, 2000 and Dec 31, 2099." in text_of(added)
    assert count(session, Appointment) == 0

    starts_at = utcnow() + timedelta(days=3)
    appointment = Appointment(case_id=case.id, starts_at=starts_at, kind="court_hearing")
    session.add(appointment)
    session.commit()
    moved = post_form(
        client,
        f"/admin/appointments/{appointment.id}/move",
        {"day": "9999-12-31", "time": "23:00"},
        prefix=f"move{appointment.id}",
    )
    assert moved.status_code == 400
    assert "New date must be between Jan 1, 2000 and Dec 31, 2099." in text_of(moved)
    assert reload(session, Appointment, appointment.id).starts_at == starts_at


def test_a_place_and_a_link_that_fit_alone_but_not_together_are_refused(client, session, staff):
    case = make_case(session)
    day = (utcnow() + timedelta(days=10)).date().isoformat()
    place = (
        "Superior Court of California, Family Law Division, 351 North Arrowhead Avenue, "
        "Dept S36, SB"
    )
    link = "https://zoom.us/j/98765432101?pwd=Q2x3ZkR0aE5vT1lWbXc4ZzZabc"
    fields = {"kind": "court_hearing", "day": day, "time": "09:30"}
    for alone in ({"location": place}, {"video_link": link}):
        response = post_form(
            client, f"/admin/cases/{case.id}/appointments", {**fields, **alone}, prefix="appt"
        )
        assert response.status_code == 302, text_of(response)
    both = {**fields, "location": place, "video_link": link}
    response = post_form(client, f"/admin/cases/{case.id}/appointments", both, prefix="appt")
    assert response.status_code == 400
    assert "too long for 2 text messages" in text_of(response)
    assert count(session, Appointment) == 2


def test_a_video_link_must_be_https(client, session, staff):
    case = make_case(session)
    day = (utcnow() + timedelta(days=3)).date().isoformat()
    response = post_form(
        client,
        f"/admin/cases/{case.id}/appointments",
        {"kind": "virtual_counter", "day": day, "time": "09:00", "video_link": "javascript:x"},
        prefix="appt",
    )
    assert response.status_code == 400 and "https://" in text_of(response)
    assert count(session, Appointment) == 0


# --- Export ----------------------------------------------------------------------------------


def test_the_export_has_the_consent_record_and_every_turn(client, session, staff):
    case = make_case(session)
    make_enrollment(session, case, consent_text="Consent wording v1", consent_version="v1")
    turn(session, case, '=HYPERLINK("http://evil")')
    turn(session, case, "Reply", Direction.OUTBOUND, delivery_status="delivered")
    response = client.get(f"/admin/cases/{case.id}/export.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text_of(response))))
    records = [row["record"] for row in rows]
    assert records.count("turn") == 2 and "consent:consented" in records
    consent = next(row for row in rows if row["record"] == "consent:consented")
    assert consent["text"] == "Consent wording v1" and consent["consent_version"] == "v1"
    inbound = next(row for row in rows if row["direction"] == "inbound")
    assert inbound["text"].startswith("'=")  # never a live formula in a spreadsheet
    # A phone begins with '+', which a spreadsheet reads as a formula too: guarded the same way.
    assert inbound["phone"] == "'+16175550134"
    assert rows[-1]["status"] == "delivered"


def test_the_export_has_the_phones_texts_about_no_one_case_too(app, client, session, staff):
    first, second = make_case(session), make_case(session)
    for case in (first, second):
        make_enrollment(session, case)
    payer_texts(app, client, "HELP")
    for case in (first, second):
        export = text_of(client.get(f"/admin/cases/{case.id}/export.csv"))
        rows = csv.DictReader(io.StringIO(export))
        assert next(row["text"] for row in rows if row["record"] == "turn") == "HELP"


def test_the_export_gives_its_connection_back_once_read(app, client, session, staff):
    case = make_case(session)
    turn(session, case, "BAL")
    pool = db.engine(app).pool
    before = pool.checkedout()
    with client.get(f"/admin/cases/{case.id}/export.csv") as response:
        assert "BAL" in text_of(response)
        # Read to the end, the stream has closed its session: no connection is left for the
        # garbage collector to hand back (on PostgreSQL, perhaps after its backend was ended).
        assert pool.checkedout() == before


def test_the_export_gives_local_times_in_the_cases_time_zone(client, session, staff):
    case = make_case(session, timezone="America/Phoenix")
    turn(session, case, "BAL", created_at=datetime(2026, 7, 1, 15, 5, tzinfo=UTC))
    export = text_of(client.get(f"/admin/cases/{case.id}/export.csv"))
    rows = list(csv.DictReader(io.StringIO(export)))
    assert rows[-1]["time_local"] == "2026-07-01 08:05:00 MST"


# --- Import ----------------------------------------------------------------------------------

HEADER = "case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone\n"


def upload(client, body: bytes, name="cases.csv", **kwargs):
    return post_form(
        client,
        "/admin/import",
        {"file": (io.BytesIO(body), name)},
        content_type="multipart/form-data",
        **kwargs,
    )


def test_an_upload_is_previewed_and_nothing_is_written_until_confirmed(client, session, admin):
    make_case(session, case_number="CS-1")
    body = (
        HEADER
        + "CS-1,Ana Rivera,6175550134,es,250.00,1250.00,2030-12-01,America/New_York\n"
        + "CS-2,James Carter,,en,100,300,,\n"
    ).encode()
    preview = upload(client, body)
    assert preview.status_code == 200
    page = text_of(preview)
    assert "2 valid cases: 1 new, 1 to update. Nothing has been written yet." in page
    assert count(session, Case) == 1 and count(session, Enrollment) == 0
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', page).group(1)

    done = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "1 new case(s), 1 updated, 1 pending enrollment(s) added" in text_of(done)
    assert count(session, Case) == 2 and count(session, Enrollment) == 1

    again = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "expired or was already imported" in text_of(again)
    assert count(session, Case) == 2


def test_only_admins_import_cases_and_staff_see_no_import_link(app, client, session, staff):
    from admin.service import stash_import

    make_case(session, case_number="CS-1", amount_due_cents=10_000, balance_cents=50_000)
    body = (HEADER + "CS-1,Ana Rivera,,en,1.00,1.00,,\n" + "CS-2,Bo,,en,1,1,,\n").encode()
    nav = text_of(client.get("/admin/")).split("<main")[0]
    assert "/admin/import" not in nav and "Import" not in nav
    refused = client.get("/admin/import")
    assert refused.status_code == 403 and "Not allowed" in text_of(refused)
    assert upload(client, body).status_code == 403
    # A preview stashed before the user lost the admin role cannot be confirmed either.
    token = stash_import(
        redis=app.extensions["redis"], text=body.decode(), user_id=staff.id, filename="cases.csv"
    )
    assert post_form(client, "/admin/import/confirm", {"token": token}).status_code == 403
    session.expire_all()
    kept = session.exec(select(Case)).one()
    assert (kept.case_number, kept.amount_due_cents, kept.balance_cents) == ("CS-1", 10_000, 50_000)

    admin = app.test_client()
    signed_in(admin, session, Role.ADMIN)
    assert "/admin/import" in text_of(admin.get("/admin/")).split("<main")[0]
    page = text_of(upload(admin, body))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', page).group(1)
    done = post_form(admin, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "1 new case(s), 1 updated" in text_of(done)
    assert count(session, Case) == 2


def test_an_import_confirmed_with_invitations_texts_each_new_number_its_opt_in_in_its_window(
    app, client, session, admin
):
    from bot.outbound import send_held_invites

    stopped = make_stopped_enrollment(
        session, make_case(session, case_number="CS-9"), phone="+16175550199"
    )
    body = (
        HEADER
        + "CS-1,Ana Rivera,6175550134,es,250.00,1250.00,2030-12-01,America/New_York\n"
        + "CS-2,James Carter,6175550135,en,100,300,,\n"
        + f"CS-3,Bo,{stopped.phone},en,1,1,,\n"  # opted out: enrolled opted out, not invited
    ).encode()
    page = text_of(upload(client, body))
    assert "Text each new number its opt-in invitation" in page
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', page).group(1)
    done = post_form(
        client, "/admin/import/confirm", {"token": token, "invite": "y"}, follow_redirects=True
    )
    assert "2 opt-in text(s) will go out over the next minutes" in text_of(done)
    assert texts(app) == []  # not from the request: the dispatch sends them, paced
    session.expire_all()
    queued = session.exec(select(Enrollment).where(Enrollment.invite_at.is_not(None))).all()
    assert sorted(e.phone for e in queued) == ["+16175550134", "+16175550135"]
    # Noon in New York the next day: inside both payers' window, whenever the suite runs.
    noon = datetime.combine(utcnow().date() + timedelta(days=1), datetime.min.time(), UTC)
    noon += timedelta(hours=17)
    with app.app_context():
        assert send_held_invites(now=noon) == 2
        assert send_held_invites(now=noon) == 0
    assert sorted(sms.to for sms in texts(app)) == ["+16175550134", "+16175550135"]
    spanish = next(sms.body for sms in texts(app) if sms.to == "+16175550134")
    assert "SI" in spanish


def test_an_import_confirmed_without_invitations_says_none_went(app, client, session, admin):
    page = text_of(upload(client, (HEADER + "CS-1,Ana,6175550134,en,1,1,,\n").encode()))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', page).group(1)
    done = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "No opt-in texts were sent" in text_of(done)
    assert session.exec(select(Enrollment)).one().invite_at is None


def test_an_upload_naming_a_number_that_cannot_take_texts_is_refused_saying_why(
    client, session, admin
):
    body = (HEADER + "CS-1,Ana,6175550134,es,1,1,,\n" + "CS-2,Bo,800-555-0134,en,1,1,,\n").encode()
    page = text_of(upload(client, body))
    assert "line 3: phone (800) 555-0134 is the agency&#39;s own number" in page
    assert 'name="token"' not in page
    assert count(session, Case) == 0


def test_an_imported_number_that_texted_stop_while_on_no_case_is_enrolled_opted_out(
    app, client, session, admin
):
    payer_texts(app, client, "ALTO")
    preview = text_of(upload(client, (HEADER + "CS-2,Ana,6175550134,es,1,1,,\n").encode()))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', preview).group(1)
    done = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "0 pending enrollment(s) added" in text_of(done)
    assert "1 number(s) had opted out of texts" in text_of(done)
    added = session.exec(select(Enrollment)).one()
    assert added.status == EnrollmentStatus.OPTED_OUT and added.invited_at is None
    assert texts(app) == []


def test_an_imported_number_that_opted_out_is_enrolled_opted_out_and_not_invited(
    app, client, session, admin
):
    first = make_stopped_enrollment(session, make_case(session, case_number="CS-1"))
    preview = text_of(upload(client, (HEADER + "CS-2,Ana,6175550134,en,1,1,,\n").encode()))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', preview).group(1)
    done = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "0 pending enrollment(s) added" in text_of(done)
    assert "1 number(s) had opted out of texts" in text_of(done)
    added = session.exec(select(Enrollment).where(Enrollment.id != first.id)).one()
    assert added.status == EnrollmentStatus.OPTED_OUT
    assert reload(session, Enrollment, first.id).opted_out_at == STOPPED_AT
    assert texts(app) == []


def test_a_file_with_bad_rows_lists_each_line_and_writes_nothing(client, session, admin):
    body = (
        HEADER
        + "CS-1,Ana Rivera,6175550134,es,250.00,1250.00,2030-12-01,America/New_York\n"
        + "CS-2,James Carter,555,en,-100,300,13/01/2030,Mars/Base\n"
        + f"CS-3,{SCRIPT},,en,1,1,,\n"
    ).encode()
    response = upload(client, body)
    assert response.status_code == 400
    page = text_of(response)
    assert "1 bad line in cases.csv: nothing was imported" in page
    assert "line 3:" in page and "is negative" in page and "not a valid phone number" in page
    assert "format the column as yyyy-mm-dd before saving as CSV" in page
    assert "Confirm" not in page and 'name="token"' not in page
    assert count(session, Case) == 0


def test_an_upload_naming_a_folder_of_zones_is_refused_at_the_preview(client, session, admin):
    response = upload(client, (HEADER + "CS-1,Ana,,en,1,1,,America\n").encode())
    assert response.status_code == 400
    assert "line 2: timezone &#39;America&#39; is not an IANA time zone" in text_of(response)
    assert count(session, Case) == 0


def test_an_amount_too_large_for_the_database_is_refused_at_the_preview(client, session, admin):
    response = upload(client, (HEADER + "CS-1,Ana,,en,99999999999999999999.00,1,,\n").encode())
    assert response.status_code == 400
    assert "line 2: amount_due" in text_of(response)
    assert "is larger than $10,000,000.00" in text_of(response)
    assert count(session, Case) == 0


def test_a_confirm_that_fails_unexpectedly_keeps_the_preview_to_try_again(
    client, session, admin, monkeypatch
):
    from cases import service as cases

    preview = text_of(upload(client, (HEADER + "CS-9,Ana,,en,1,1,,\n").encode()))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', preview).group(1)
    real = cases.apply_import

    def fails_once(**kwargs):
        monkeypatch.setattr(cases, "apply_import", real)
        raise RuntimeError("database went away")

    monkeypatch.setattr(cases, "apply_import", fails_once)
    with pytest.raises(RuntimeError):
        post_form(client, "/admin/import/confirm", {"token": token})
    assert count(session, Case) == 0
    again = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "1 new case(s)" in text_of(again)
    assert count(session, Case) == 1


def test_a_file_that_is_not_utf8_is_refused(client, session, admin):
    response = upload(client, HEADER.encode() + "CS-1,Jos\xe9,,en,1,1,,\n".encode("latin-1"))
    assert response.status_code == 400
    assert "not UTF-8" in text_of(response)
    # Where, and how to save it as UTF-8, rather than a byte offset no spreadsheet shows.
    assert "line 2" in text_of(response) and "CSV UTF-8 (Comma delimited)" in text_of(response)
    assert count(session, Case) == 0


def test_an_upload_without_a_file_is_explained(client, admin):
    response = post_form(client, "/admin/import", {}, content_type="multipart/form-data")
    assert response.status_code == 400 and "Choose a CSV file." in text_of(response)


def test_a_ten_megabyte_upload_gets_a_clear_413_and_writes_nothing(client, session, admin):
    row = "CS-1,Ana Rivera,6175550134,es,250.00,1250.00,2030-12-01,America/New_York\n"
    body = (HEADER + row * (10 * 1024 * 1024 // len(row) + 1)).encode()
    assert len(body) > 10 * 1024 * 1024
    response = upload(client, body)
    assert response.status_code == 413
    assert "Uploads are limited to 5 MB and nothing was imported" in text_of(response)
    assert count(session, Case) == 0


def test_another_users_preview_cannot_be_confirmed(app, client, session, admin):
    preview = text_of(upload(client, (HEADER + "CS-9,Ana,,en,1,1,,\n").encode()))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', preview).group(1)
    other = app.test_client()
    signed_in(other, session, Role.ADMIN, "other@agency.test")
    response = post_form(other, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "belongs to someone else" in text_of(response)
    assert count(session, Case) == 0


def test_another_users_attempt_leaves_the_preview_for_its_uploader(app, client, session, admin):
    preview = text_of(upload(client, (HEADER + "CS-9,Ana,,en,1,1,,\n").encode()))
    token = re.search(r'name="token" type="hidden" value="([^"]+)"', preview).group(1)
    other = app.test_client()
    signed_in(other, session, Role.ADMIN, "other@agency.test")
    refused = post_form(other, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "belongs to someone else" in text_of(refused)

    mine = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "1 new case(s)" in text_of(mine)
    assert count(session, Case) == 1
    again = post_form(client, "/admin/import/confirm", {"token": token}, follow_redirects=True)
    assert "expired or was already imported" in text_of(again)
    assert count(session, Case) == 1


def test_a_preview_taken_by_another_confirm_while_it_was_checked_is_not_taken_twice(app):
    from admin.service import AdminError, stash_import, take_import

    redis = app.extensions["redis"]
    token = stash_import(redis=redis, text=HEADER, user_id=7, filename="cases.csv")

    class OtherConfirmMeanwhile:
        """Redis whose first read of the preview is followed by another confirm taking it."""

        raced = False

        def pipeline(self):
            pipe = redis.pipeline()
            read = pipe.get

            def get(key):
                raw = read(key)
                if not self.raced:
                    self.raced = True
                    redis.delete(key)
                return raw

            pipe.get = get
            return pipe

    with pytest.raises(AdminError, match="expired or was already imported"):
        take_import(redis=OtherConfirmMeanwhile(), token=token, user_id=7)


# --- Escaping --------------------------------------------------------------------------------


def test_payer_text_is_escaped_on_every_page(client, session, admin):
    case = make_case(session, payer_name=SCRIPT, case_number="X-1")
    make_enrollment(session, case, "+16175550134", consent_text=SCRIPT)
    agent = turn(session, case, SCRIPT, intent="<b>agent</b>")
    session.add(Handoff(case_id=case.id, phone="+16175550134", turn_id=agent.id))
    session.commit()
    pages = [
        "/admin/",
        "/admin/cases",
        f"/admin/cases?q={SCRIPT}",
        f"/admin/cases/{case.id}",
        "/admin/handoffs",
        "/admin/users",
        "/admin/enroll?case=" + SCRIPT,
    ]
    for path in pages:
        page = text_of(client.get(path))
        assert "<script>alert" not in page, path
        assert "<b>agent" not in page, path
    assert "&lt;script&gt;" in text_of(client.get(f"/admin/cases/{case.id}"))
    preview = text_of(upload(client, (HEADER + f'X-2,"{SCRIPT}",,en,1,1,,\n').encode()))
    assert "<script>alert" not in preview and "&lt;script&gt;" in preview


# --- Dashboard and dispatch ------------------------------------------------------------------


def test_the_dashboard_draws_charts_from_what_happened(client, session, staff):
    case = make_case(session)
    now = utcnow()
    for status in ("delivered", "delivered", "failed"):
        turn(session, case, "hi", Direction.OUTBOUND, delivery_status=status, created_at=now)
    session.add(
        Payment(
            case_id=case.id,
            amount_cents=12_345,
            status=PaymentStatus.SUCCEEDED,
            idempotency_key="d-1",
            succeeded_at=now,
        )
    )
    session.commit()
    page = text_of(client.get("/admin/"))
    assert page.count("<svg") == 5
    assert "Texts per day" in page and "Reply rate" in page
    tiles = page.split('class="tiles"')[1].split("</ul>")[0]
    assert '<span class="figure">3</span> texts sent' in tiles
    assert '<span class="figure">1</span> failed' in tiles
    assert "$123.45" in tiles
    assert "Send due reminders now" not in page  # staff may not


def test_the_dashboard_counts_numbers_that_opted_out_not_their_enrollments(
    app, client, session, staff
):
    for _ in range(3):
        make_enrollment(session, make_case(session), "+16175550134")
    payer_texts(app, client, "STOP")  # one payer, three cases
    payer_texts(app, client, "STOP", phone="+16175550199")  # on no case
    payer_texts(app, client, "STOP")  # again: still one number
    session.expire_all()
    assert (
        len(session.exec(select(Enrollment).where(Enrollment.opted_out_at.is_not(None))).all()) == 3
    )

    page = text_of(client.get("/admin/"))
    tiles = page.split('class="tiles"')[1].split("</ul>")[0]
    assert '<span class="figure">2</span> numbers opted out' in tiles
    assert "Each phone number counts once" in page
    assert dashboard(session=session, zone="UTC", days=2).totals["opt_outs"] == 2


def test_a_reminder_answered_by_a_text_about_no_one_case_counts_as_answered(app, client, session):
    reminded, other = make_case(session), make_case(session)
    for case in (reminded, other):
        make_enrollment(session, case)
    session.add(
        Reminder(
            case_id=reminded.id,
            kind=ReminderKind.DUE_SOON,
            cycle="2026-12-01",
            send_at=utcnow(),
            status=ReminderStatus.SENT,
            sent_at=utcnow() - timedelta(minutes=5),
        )
    )
    session.commit()
    payer_texts(app, client, "BAL")  # "which case?"
    replies = dashboard(session=session, zone="UTC", days=2).replies
    assert (sum(d.reminders for d in replies), sum(d.replied for d in replies)) == (1, 1)


def test_an_admin_sends_due_reminders_now(app, client, session, admin):
    from jobs.reminders import plan_case

    case = make_case(session, next_due_date=utcnow().date() + timedelta(days=3))
    make_enrollment(session, case, "+16175550134")
    with app.app_context():
        plan_case(session=session, case_id=case.id)
        session.commit()
    due = session.exec(select(Reminder).where(Reminder.case_id == case.id)).first()
    assert due is not None
    due.send_at = utcnow() - timedelta(minutes=1)
    session.add(due)
    session.commit()

    assert "Send due reminders now" in text_of(client.get("/admin/"))
    response = post_form(
        client, "/admin/reminders/dispatch", prefix="dispatch", follow_redirects=True
    )
    assert "Due reminders dispatched: 1 due" in text_of(response)
    assert reload(session, Reminder, due.id).status != ReminderStatus.SCHEDULED


def test_user_management_lists_accounts_with_their_lock(client, session, admin):
    page = text_of(client.get("/admin/users"))
    assert "admin@agency.test" in page
    assert session.exec(select(AdminUser)).one().role == Role.ADMIN


# --- Accessibility ---------------------------------------------------------------------------


class Controls(HTMLParser):
    """The form controls of a page and the ids its labels point at."""

    def __init__(self):
        super().__init__()
        self.controls: list[dict] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "label" and attributes.get("for"):
            self.labelled.add(attributes["for"])
        if tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.controls.append(attributes)


def test_every_field_on_every_page_has_a_label(app, client, session, admin):
    case = make_case(session)
    make_enrollment(session, case, "+16175550134")
    session.add(
        Appointment(case_id=case.id, starts_at=utcnow() + timedelta(days=5), location="Room 5")
    )
    session.commit()
    paid(app, session, case)
    pages = [
        "/admin/",
        "/admin/cases",
        f"/admin/cases/{case.id}",
        "/admin/enroll",
        "/admin/import",
        "/admin/users",
    ]
    seen = 0
    for path in pages:
        page = Controls()
        page.feed(text_of(client.get(path)))
        for control in page.controls:
            assert control.get("id") in page.labelled or control.get("aria-label"), (path, control)
            seen += 1
    assert seen >= 25
    case_page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert 'class="skip" href="#main"' in case_page and 'lang="en"' in case_page
    login = Controls()
    login.feed(text_of(app.test_client().get("/admin/login")))
    assert {c["id"] for c in login.controls} <= login.labelled


def test_staff_pages_are_neither_cached_nor_framed(client, session, staff):
    case = make_case(session)
    for url in ("/admin/", f"/admin/cases/{case.id}", "/admin/login"):
        response = client.get(url)
        assert response.headers["Cache-Control"] == "no-store", url
        assert response.headers["X-Frame-Options"] == "DENY", url


def test_staff_mark_a_flagged_payment_reviewed_and_the_case_page_stops_asking(
    app, client, session, staff
):
    """A payment that went through after the payer was told it failed waits for a person."""
    case = make_case(session)
    payment = paid(app, session, case, 25_000)
    payment.review_reason = "succeeded_after_failure"
    session.add(payment)
    session.commit()
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert 'id="payments-to-review"' in page and "Mark the $250.00 payment reviewed" in page

    done = post_form(client, f"/admin/payments/{payment.id}/reviewed", prefix="reviewed")
    assert done.status_code == 302
    payment = reload(session, Payment, payment.id)
    assert payment.reviewed_by == staff.id and payment.reviewed_at is not None
    assert payment.review_reason == "succeeded_after_failure"  # why it was flagged stays
    page = text_of(client.get(f"/admin/cases/{case.id}"))
    assert 'id="payments-to-review"' not in page
    assert f"Reviewed (succeeded after failure) by {staff.email}" in page

    again = post_form(
        client, f"/admin/payments/{payment.id}/reviewed", prefix="reviewed", follow_redirects=True
    )
    assert "already marked reviewed; nothing changed" in text_of(again)
    assert reload(session, Payment, payment.id).reviewed_at == payment.reviewed_at


def test_only_a_flagged_payment_can_be_marked_reviewed_and_only_with_the_form(
    app, client, session, staff
):
    case = make_case(session)
    payment = paid(app, session, case, 25_000)
    forged = client.post(f"/admin/payments/{payment.id}/reviewed")  # no CSRF token
    assert forged.status_code == 400
    refused = post_form(
        client, f"/admin/payments/{payment.id}/reviewed", prefix="reviewed", follow_redirects=True
    )
    assert "not waiting for a review; nothing changed" in text_of(refused)
    assert reload(session, Payment, payment.id).reviewed_at is None
    missing = post_form(client, "/admin/payments/999999/reviewed", prefix="reviewed")
    assert missing.status_code == 404
