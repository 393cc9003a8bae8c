"""A real browser (Debian's chromium, driven by Playwright) signs in, enrolls a number, answers
YES from the phone simulator, and sees the enrollment turn active; it saves the screenshots the
README shows.

`make test` installs chromium with apt-get when it is missing. Without it this test fails with
a message saying how to install it: a browser test that skips quietly would prove nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from werkzeug.serving import make_server

import db
from models import (
    ConversationTurn,
    Direction,
    Enrollment,
    EnrollmentStatus,
    Payment,
    PaymentStatus,
    Reminder,
    ReminderKind,
    ReminderStatus,
    Role,
    utcnow,
)
from scripts.embedded_redis import free_port
from tests.admin_helpers import PASSWORD, make_user
from tests.factories import make_case, make_enrollment

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Screenshots land in a git-ignored folder; `SCREENSHOT_DIR=docs/screenshots make test` refreshes
# the README's copies.
SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR") or Path(__file__).resolve().parent / "screenshots"
).resolve()
PHONE = "+16175550134"


@pytest.fixture
def live_server(config) -> Iterator[str]:
    """The app served over HTTP on a free port, in a thread, for the browser to reach."""
    from app import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config["PUBLIC_BASE_URL"] = base
    application = create_app(config)
    server = make_server("127.0.0.1", port, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    thread.join(timeout=10)
    db.engine(application).dispose()


@pytest.fixture
def browser():
    """Debian's chromium under Playwright; a clear failure when it is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}. `make test` installs it on Debian "
            "(apt-get install -y chromium); elsewhere install Chromium and set CHROMIUM to its "
            "path. Never `playwright install`: the project uses the system browser."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def seed_history(session) -> None:
    """Two weeks of texts, payments, opt-outs and replies, so the dashboard has data to draw."""
    now = utcnow()
    for day in range(14):
        at = now - timedelta(days=day, hours=1)
        case = make_case(session, case_number=f"MA-2025-0044{day:02d}", payer_name="James Carter")
        phone = f"+161755502{day:02d}"
        make_enrollment(session, case, phone)
        for n in range(3 + (day * 7) % 5):
            status = "failed" if n == 0 and day % 4 == 0 else "delivered"
            session.add(
                ConversationTurn(
                    case_id=case.id,
                    phone=phone,
                    direction=Direction.OUTBOUND,
                    body="Reminder",
                    delivery_status=status,
                    created_at=at,
                )
            )
        session.add(
            Reminder(
                case_id=case.id,
                kind=ReminderKind.DUE_SOON,
                cycle="history",
                send_at=at,
                sent_at=at,
                status=ReminderStatus.SENT,
            )
        )
        if day % 3:
            session.add(
                ConversationTurn(
                    case_id=case.id,
                    phone=phone,
                    direction=Direction.INBOUND,
                    body="PAY",
                    created_at=at + timedelta(minutes=20),
                )
            )
        if day % 4 == 1:
            session.add(
                Enrollment(
                    case_id=case.id,
                    phone=f"+161755503{day:02d}",
                    status=EnrollmentStatus.OPTED_OUT,
                    consent_version="demo",
                    opted_out_at=at,
                )
            )
        if day % 2 == 0:
            session.add(
                Payment(
                    case_id=case.id,
                    amount_cents=5_000 + day * 1_250,
                    status=PaymentStatus.SUCCEEDED,
                    idempotency_key=f"history-{day}",
                    succeeded_at=at,
                )
            )
    session.commit()


def test_staff_enroll_a_number_and_see_it_go_active_when_the_payer_says_yes(
    live_server, browser, session, daytime
):
    make_user(session, "staff@agency.test", Role.ADMIN)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)

    page.goto(f"{live_server}/admin/")
    assert "/admin/login" in page.url
    page.fill("#email", "staff@agency.test")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url(f"{live_server}/admin/")

    page.click("text=Enroll")
    page.wait_for_url(f"{live_server}/admin/enroll")
    page.fill("#case_number", "MA-2026-000777")
    page.fill("#payer_name", "Ana Rivera")
    page.fill("#amount_due", "250.00")
    page.fill("#balance", "1250.00")
    page.fill("#next_due_date", "2030-12-01")
    page.fill("#phone", "617 555 0134")
    page.select_option("#language", "en")
    page.check("#consent")
    page.screenshot(path=str(SCREENSHOTS / "enroll.png"), full_page=True)
    page.click("#enroll")
    page.wait_for_url(f"{live_server}/admin/cases/*")
    case_url = page.url
    assert "The opt-in text was sent" in page.inner_text(".flashes")
    assert "pending" in page.inner_text("#enrollments")
    (enrollment,) = session.exec(select(Enrollment)).all()
    assert enrollment.status == EnrollmentStatus.PENDING

    page.goto(f"{live_server}/dev/phone?phone=%2B16175550134")
    assert page.input_value("#phone") == PHONE
    assert "Reply YES" in page.inner_text("#thread")
    page.fill("#body", "YES")
    with page.expect_navigation():
        page.click("#send")
    assert page.locator("#thread li.turn.inbound").count() == 1
    assert "YES" in page.inner_text("#thread li.turn.inbound")

    session.expire_all()
    assert session.get(Enrollment, enrollment.id).status == EnrollmentStatus.ACTIVE

    page.goto(case_url)
    enrollments = page.inner_text("#enrollments")
    assert "active" in enrollments and "pending" not in enrollments
    inbound = page.locator("#timeline li.turn.inbound")
    outbound = page.locator("#timeline li.turn.outbound")
    assert inbound.count() == 1 and "YES" in inbound.first.inner_text()
    assert outbound.count() >= 2  # the invitation and the answer to YES
    assert "optin_invite" in outbound.first.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "case.png"), full_page=True)

    seed_history(session)
    page.goto(f"{live_server}/admin/")
    assert page.locator("svg.chart").count() == 5
    sent = int(page.inner_text(".tiles li:first-child .figure"))
    assert sent >= 40
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

    # The staff pages work at phone width too: the navigation wraps and nothing overflows.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(case_url)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the case page is {width}px wide on a 390px phone"
