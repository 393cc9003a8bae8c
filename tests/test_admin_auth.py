"""Sign-in, sessions, CSRF and roles on the staff pages."""

from __future__ import annotations

import re
from datetime import timedelta
from email.utils import parsedate_to_datetime

import pytest
from sqlmodel import Session, select

from admin.auth import (
    LOCKOUT,
    MAX_FAILURES,
    SIGN_IN_REFUSED,
    after_failure,
    authenticate,
    is_locked,
)
from models import AdminUser, Case, Payment, PaymentStatus, Refund, Role, utcnow
from tests.admin_helpers import (
    PASSWORD,
    csrf_token,
    make_user,
    post_form,
    reload,
    sign_in,
    signed_in,
)
from tests.factories import make_case, make_enrollment


def admin_rules(app):
    """Every /admin route and method, with sample values for its URL arguments."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "admin.login":
            continue
        url = re.sub(r"<(?:\w+:)?\w+>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, url, rule.endpoint


def test_the_admin_has_the_routes_the_issue_asks_for(app):
    endpoints = {endpoint for _, _, endpoint in admin_rules(app)}
    assert {
        "admin.dashboard",
        "admin.cases",
        "admin.case",
        "admin.enroll",
        "admin.handoffs",
        "admin.import_cases",
        "admin.refund",
        "admin.users",
        "admin.dispatch_reminders",
        "admin.export_case",
    } <= endpoints


def test_every_admin_route_sends_a_visitor_without_a_session_to_sign_in(app, client):
    token = csrf_token(client)
    checked = 0
    for method, url, endpoint in admin_rules(app):
        if method == "GET":
            response = client.get(url)
        else:
            # A valid token, so it is the missing sign-in that turns the request away.
            response = client.post(url, data={"csrf_token": token})
        assert response.status_code in (302, 403), (method, url, endpoint)
        if response.status_code == 302:
            assert response.headers["Location"].startswith("/admin/login"), (method, url)
        checked += 1
    assert checked >= 20


def test_every_admin_post_without_a_csrf_token_is_refused(app, client, session):
    signed_in(client, session)
    case = make_case(session)
    cases_before = len(session.exec(select(Case)).all())
    for method, url, endpoint in admin_rules(app):
        if method != "POST":
            continue
        url = url.replace("/cases/1", f"/cases/{case.id}")
        response = client.post(url, data={"text": "hello", "phone": "6175550134"})
        assert response.status_code == 400, (url, endpoint)
        assert "Nothing was changed" in response.get_data(as_text=True)
    session.expire_all()
    assert len(session.exec(select(Case)).all()) == cases_before


def test_signing_in_without_a_csrf_token_is_refused(client, session):
    make_user(session, "ana@agency.test")
    response = client.post("/admin/login", data={"email": "ana@agency.test", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_only_the_signed_webhooks_and_jobs_triggers_skip_csrf(app, client):
    from admin.auth import SIGNED_PATHS, SIGNED_PREFIXES, csrf

    outside = [
        rule
        for rule in app.url_map.iter_rules()
        if "POST" in rule.methods and not rule.rule.startswith("/admin")
    ]
    for rule in outside:
        view = app.view_functions[rule.endpoint]
        exempt = f"{view.__module__}.{view.__name__}" in csrf._exempt_views
        signed = rule.rule in SIGNED_PATHS or rule.rule.startswith(SIGNED_PREFIXES)
        assert exempt == signed, rule.rule
    # The webhook's own checks answer, not CSRF (which would refuse with 400).
    assert client.post("/sms/inbound", data={"Body": "YES"}).status_code != 400
    assert client.post("/dev/phone", data={"phone": "6175550134", "body": "YES"}).status_code == 400


def test_staff_cannot_refund_or_manage_users(client, session):
    staff = signed_in(client, session, Role.STAFF)
    other = make_user(session, "someone@agency.test", Role.STAFF)
    case = make_case(session)
    payment = Payment(
        case_id=case.id,
        amount_cents=25_000,
        status=PaymentStatus.SUCCEEDED,
        idempotency_key="pay-1",
        succeeded_at=utcnow(),
    )
    session.add(payment)
    session.commit()

    page = client.get(f"/admin/cases/{case.id}").get_data(as_text=True)
    assert "Refund" not in page
    assert (
        post_form(
            client, f"/admin/payments/{payment.id}/refund", prefix=f"refund{payment.id}"
        ).status_code
        == 403
    )
    assert session.exec(select(Refund)).all() == []

    assert client.get("/admin/users").status_code == 403
    created = post_form(
        client, "/admin/users", {"email": "new@agency.test", "password": PASSWORD, "role": "admin"}
    )
    assert created.status_code == 403
    assert (
        post_form(
            client, f"/admin/users/{other.id}/role", {"role": "admin"}, prefix=f"role{other.id}"
        ).status_code
        == 403
    )
    assert (
        post_form(
            client, f"/admin/users/{staff.id}/role", {"role": "admin"}, prefix=f"role{staff.id}"
        ).status_code
        == 403
    )
    assert post_form(client, f"/admin/users/{other.id}/unlock", prefix="unlock").status_code == 403
    assert post_form(client, "/admin/reminders/dispatch", prefix="dispatch").status_code == 403
    session.expire_all()
    assert {u.email: u.role for u in session.exec(select(AdminUser)).all()} == {
        "staff@agency.test": "staff",
        "someone@agency.test": "staff",
    }
    assert "Users" not in client.get("/admin/").get_data(as_text=True).split("<main")[0]


def test_an_admin_adds_a_staff_account_and_a_short_password_is_refused(client, session):
    signed_in(client, session)
    short = post_form(
        client, "/admin/users", {"email": "b@agency.test", "password": "short", "role": "staff"}
    )
    assert short.status_code == 400
    assert "at least 12" in short.get_data(as_text=True)
    made = post_form(
        client, "/admin/users", {"email": "b@agency.test", "password": PASSWORD, "role": "staff"}
    )
    assert made.status_code == 302
    user = session.exec(select(AdminUser).where(AdminUser.email == "b@agency.test")).one()
    assert user.role == Role.STAFF and PASSWORD not in user.password_hash
    again = post_form(
        client, "/admin/users", {"email": "B@agency.test", "password": PASSWORD, "role": "staff"}
    )
    assert again.status_code == 400 and "already exists" in again.get_data(as_text=True)


def test_an_account_added_twice_at_once_is_created_once_and_the_second_says_so(
    app, client, session, monkeypatch
):
    """A double-click on Add account: the first request commits while the second hashes."""
    import admin.users
    import db

    signed_in(client, session)
    hash_password = admin.users.hash_password

    def first_request_commits_meanwhile(password: str) -> str:
        with Session(db.engine(app)) as other:
            other.add(
                AdminUser(
                    email="new@agency.test", password_hash=hash_password(password), role="staff"
                )
            )
            other.commit()
        return hash_password(password)

    monkeypatch.setattr(admin.users, "hash_password", first_request_commits_meanwhile)
    second = post_form(
        client, "/admin/users", {"email": "new@agency.test", "password": PASSWORD, "role": "staff"}
    )
    assert second.status_code == 400
    assert "a user with email new@agency.test already exists" in second.get_data(as_text=True)
    session.expire_all()
    assert (
        len(session.exec(select(AdminUser).where(AdminUser.email == "new@agency.test")).all()) == 1
    )


def test_an_admin_cannot_demote_themself(client, session):
    admin = signed_in(client, session)
    response = post_form(
        client,
        f"/admin/users/{admin.id}/role",
        {"role": "staff"},
        prefix=f"role{admin.id}",
        follow_redirects=True,
    )
    assert "cannot remove your own admin role" in response.get_data(as_text=True)
    assert reload(session, AdminUser, admin.id).role == Role.ADMIN


def test_five_wrong_passwords_lock_the_account_even_against_the_right_one(client, session):
    user = make_user(session, "ana@agency.test")
    for _ in range(MAX_FAILURES):
        response = sign_in(client, "ana@agency.test", "wrong password!!")
        assert response.status_code == 401
        assert SIGN_IN_REFUSED in response.get_data(as_text=True)
    right = sign_in(client, "ana@agency.test")
    assert right.status_code == 401
    assert SIGN_IN_REFUSED in right.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    stored = reload(session, AdminUser, user.id)
    assert stored.failed_logins == MAX_FAILURES and is_locked(stored, utcnow())


def _answer(response) -> tuple[int, str]:
    """Status and page text without the parts that differ anyway: CSRF token and typed email."""
    page = re.sub(r'value="[^"]*"', 'value=""', response.get_data(as_text=True))
    return response.status_code, page


def test_a_locked_account_and_an_unknown_email_get_the_same_answer(client, session):
    locked = make_user(session, "ana@agency.test")
    locked.failed_logins, locked.locked_until = MAX_FAILURES, utcnow() + LOCKOUT
    session.add(locked)
    session.commit()
    unknown = sign_in(client, "nobody@agency.test", "wrong password!!")
    refused = sign_in(client, "ana@agency.test", "wrong password!!")
    assert _answer(refused) == _answer(unknown)
    assert unknown.status_code == 401
    assert SIGN_IN_REFUSED in unknown.get_data(as_text=True)
    assert "locked until" not in refused.get_data(as_text=True)

    # The right password is refused the same way until the lock ends, then it works.
    right = sign_in(client, "ana@agency.test")
    assert _answer(right) == _answer(unknown)
    assert client.get("/admin/").status_code == 302
    stored = reload(session, AdminUser, locked.id)
    stored.locked_until = utcnow() - timedelta(seconds=1)
    session.add(stored)
    session.commit()
    assert sign_in(client, "ana@agency.test").status_code == 302
    assert client.get("/admin/").status_code == 200


def test_a_locked_account_still_verifies_a_password_hash_so_it_answers_as_slowly(
    monkeypatch, session
):
    import admin.auth

    verified = []
    monkeypatch.setattr(
        admin.auth, "verify_password", lambda hashed, password: verified.append(hashed) or False
    )
    user = make_user(session, "ana@agency.test")
    user.failed_logins, user.locked_until = MAX_FAILURES, utcnow() + LOCKOUT
    session.add(user)
    session.commit()
    for email in ("ana@agency.test", "nobody@agency.test"):
        outcome = authenticate(session=session, email=email, password=PASSWORD)
        assert outcome.user is None and outcome.error == SIGN_IN_REFUSED
    assert len(verified) == 2 and verified[0] == user.password_hash


def test_an_admin_unlocks_a_locked_account(client, session):
    locked = make_user(session, "ana@agency.test", Role.STAFF)
    locked.failed_logins, locked.locked_until = MAX_FAILURES, utcnow() + LOCKOUT
    session.add(locked)
    session.commit()
    signed_in(client, session)
    response = post_form(client, f"/admin/users/{locked.id}/unlock", prefix="unlock")
    assert response.status_code == 302
    assert reload(session, AdminUser, locked.id).locked_until is None
    client.post("/admin/logout", data={"logout-csrf_token": csrf_token(client, "/admin/")})
    assert sign_in(client, "ana@agency.test").status_code == 302


def test_an_unknown_email_gets_the_same_answer_as_a_wrong_password(client, session):
    make_user(session, "ana@agency.test")
    unknown = sign_in(client, "nobody@agency.test")
    wrong = sign_in(client, "ana@agency.test", "not the password")
    assert _answer(unknown) == _answer(wrong)
    assert unknown.status_code == 401
    assert SIGN_IN_REFUSED in unknown.get_data(as_text=True)


def test_a_good_sign_in_clears_earlier_failures(client, session):
    user = make_user(session, "ana@agency.test")
    sign_in(client, "ana@agency.test", "nope nope nope")
    assert sign_in(client, "ANA@agency.test ").status_code == 302
    stored = reload(session, AdminUser, user.id)
    assert stored.failed_logins == 0 and stored.last_login_at is not None


def test_a_lock_lasts_fifteen_minutes_and_the_next_failure_relocks():
    now = utcnow()
    assert after_failure(0, now) == (1, None)
    failures, until = after_failure(MAX_FAILURES - 1, now)
    assert failures == MAX_FAILURES and until == now + timedelta(minutes=15)
    user = AdminUser(email="a@b.c", password_hash="x", locked_until=until)
    assert is_locked(user, now + timedelta(minutes=14))
    assert not is_locked(user, now + timedelta(minutes=15))
    assert after_failure(MAX_FAILURES, now + timedelta(minutes=20))[1] is not None


def test_sign_in_never_redirects_off_the_admin(client, session):
    make_user(session, "ana@agency.test")
    token = csrf_token(client)
    response = client.post(
        "/admin/login?next=https://evil.example/admin",
        data={"email": "ana@agency.test", "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/admin/"


def test_sign_in_returns_to_the_page_asked_for(client, session):
    make_user(session, "ana@agency.test")
    assert client.get("/admin/handoffs").headers["Location"].startswith("/admin/login?next=")
    token = csrf_token(client)
    response = client.post(
        "/admin/login?next=/admin/handoffs",
        data={"email": "ana@agency.test", "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/admin/handoffs"


def test_a_form_sent_after_the_session_ended_returns_to_its_page_after_sign_in(
    app, client, session
):
    """Signed out elsewhere while writing a reply: sign-in leads back to the case page, not to
    the reply's POST-only address (a bare 405), and says the reply was not sent."""
    user = signed_in(client, session, Role.STAFF)
    case = make_case(session)
    make_enrollment(session, case)
    case_page = f"/admin/cases/{case.id}"
    token = csrf_token(client, case_page)
    sign_out(_other_browser(app, user.email))  # signed out in another browser

    response = client.post(
        f"{case_page}/reply",
        data={"reply-csrf_token": token, "reply-phone": "+16175550134", "reply-text": "Hello"},
        headers={"Referer": f"http://localhost{case_page}"},
    )
    assert response.status_code == 302
    login_page = client.get(response.headers["Location"])
    assert "was not saved and no text went out" in login_page.get_data(as_text=True)
    assert not app.extensions["sms"].sent

    back = client.post(
        response.headers["Location"],
        data={"email": user.email, "password": PASSWORD, "csrf_token": csrf_token(client)},
    )
    assert back.headers["Location"] == case_page
    assert client.get(case_page).status_code == 200


def test_sign_out_pressed_after_the_session_ended_elsewhere_just_says_signed_out(
    app, client, session
):
    user = signed_in(client, session, Role.STAFF)
    token = csrf_token(client, "/admin/")
    sign_out(_other_browser(app, user.email))

    response = client.post("/admin/logout", data={"logout-csrf_token": token})
    assert response.headers["Location"] == "/admin/login"
    page = client.get("/admin/login").get_data(as_text=True)
    assert "You are signed out." in page and "not saved" not in page


def _other_browser(app, email):
    browser = app.test_client()
    assert sign_in(browser, email).status_code == 302
    return browser


@pytest.mark.parametrize("target", ["/admin/logout", "/admin/import/confirm"])
def test_sign_in_never_returns_to_an_address_that_only_takes_forms(client, session, target):
    make_user(session, "ana@agency.test")
    token = csrf_token(client)
    response = client.post(
        f"/admin/login?next={target}",
        data={"email": "ana@agency.test", "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/admin/"
    assert client.get(response.headers["Location"]).status_code == 200


def test_sign_out_ends_the_session(client, session):
    signed_in(client, session)
    assert client.get("/admin/").status_code == 200
    response = client.post(
        "/admin/logout", data={"logout-csrf_token": csrf_token(client, "/admin/")}
    )
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 302


def sign_out(client):
    """Press Sign out as the signed-in browser would."""
    token = csrf_token(client, "/admin/")
    assert client.post("/admin/logout", data={"logout-csrf_token": token}).status_code == 302


def with_cookie(app, cookie: str):
    """Another browser holding a copy of a session cookie."""
    browser = app.test_client()
    browser.set_cookie("session", cookie)
    return browser


def test_a_cookie_copied_before_sign_out_is_signed_out_too(app, client, session):
    """Sign-out ends the session on the server, not just in the browser that pressed it.

    It ends every session of that user: a second browser signed in separately is signed out as
    well, since one session version per user is what the server keeps.
    """
    user = signed_in(client, session)
    copied = with_cookie(app, client.get_cookie("session").value)
    assert copied.get("/admin/").status_code == 200
    other_browser = app.test_client()
    assert sign_in(other_browser, user.email).status_code == 302

    sign_out(client)

    for browser in (copied, other_browser):
        response = browser.get("/admin/")
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/admin/login")
    assert reload(session, AdminUser, user.id).session_version == 1
    # Signing in again gives a cookie that works.
    assert sign_in(client, user.email).status_code == 302
    assert client.get("/admin/").status_code == 200


def test_a_role_change_signs_the_user_out_and_leaves_the_admin_signed_in(app, client, session):
    signed_in(client, session)
    staff_browser = app.test_client()
    staff = signed_in(staff_browser, session, Role.STAFF)
    assert staff_browser.get("/admin/").status_code == 200
    changed = post_form(
        client, f"/admin/users/{staff.id}/role", {"role": "admin"}, prefix=f"role{staff.id}"
    )
    assert changed.status_code == 302
    assert staff_browser.get("/admin/").status_code == 302
    assert client.get("/admin/users").status_code == 200
    assert sign_in(staff_browser, staff.email).status_code == 302
    assert staff_browser.get("/admin/users").status_code == 200


def test_a_session_without_a_current_session_version_belongs_to_nobody(app, session):
    from admin.auth import _load_user

    user = make_user(session, "ana@agency.test")
    with app.test_request_context():
        assert _load_user(f"{user.id}:0").id == user.id
        assert _load_user(f"{user.id}:1") is None
        assert _load_user(str(user.id)) is None  # a cookie signed before session versions
        assert _load_user("x:0") is None


def test_the_session_cookie_is_httponly_and_lax_and_not_secure_over_http(client, session):
    make_user(session, "ana@agency.test")
    cookie = sign_in(client, "ana@agency.test").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie


@pytest.mark.parametrize("base_url", ["https://pay.agency.test"])
def test_the_session_cookie_is_secure_when_served_over_https(config, base_url):
    from app import create_app

    config["PUBLIC_BASE_URL"] = base_url
    app = create_app(config)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["REMEMBER_COOKIE_SECURE"] is True


def test_passwords_are_stored_as_argon2_hashes(session):
    user = make_user(session, "ana@agency.test")
    assert user.password_hash.startswith("$argon2id$")


def test_many_failures_from_one_address_slow_it_down_across_emails(client, session):
    from admin.auth import MAX_ADDRESS_FAILURES

    make_user(session, "ana@agency.test")
    for n in range(MAX_ADDRESS_FAILURES):
        assert sign_in(client, f"guess{n}@agency.test", "wrong wrong wrong").status_code == 401
    blocked = sign_in(client, "ana@agency.test")
    assert blocked.status_code == 429
    assert "Too many failed sign-ins from this network" in blocked.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_a_session_lasts_twelve_hours_at_most(client, session):
    make_user(session, "ana@agency.test")
    cookie = sign_in(client, "ana@agency.test").headers["Set-Cookie"]
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", cookie).group(1))
    assert timedelta(hours=11) < expires - utcnow() <= timedelta(hours=12)


@pytest.fixture
def clock(monkeypatch):
    """Move the server's clocks (the session cookie's signature and the sign-in's) forward."""
    import itsdangerous.timed

    import admin.views

    start = utcnow()
    offset = [timedelta()]

    class Time:
        @staticmethod
        def time() -> float:
            return (start + offset[0]).timestamp()

    monkeypatch.setattr(itsdangerous.timed, "time", Time)
    monkeypatch.setattr(admin.views, "utcnow", lambda: start + offset[0])

    def advance(hours: float) -> None:
        offset[0] += timedelta(hours=hours)

    return advance


def test_a_session_used_all_day_still_ends_twelve_hours_after_sign_in(clock, client, session):
    """The cookie is signed afresh on every request, so only the sign-in's own time ends it."""
    signed_in(client, session, Role.STAFF)
    for hours in (4, 4, 3):
        clock(hours=hours)  # 4, 8, then 11 hours after signing in, each within a cookie's 12
        assert client.get("/admin/cases").status_code == 200
    clock(hours=1)

    response = client.get("/admin/cases")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login")
    assert "sign in again" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert client.get("/admin/cases").status_code == 302
    assert sign_in(client, "staff@agency.test").status_code == 302
    assert client.get("/admin/cases").status_code == 200


def test_a_sign_in_lapses_at_twelve_hours_and_a_session_that_does_not_say_when_at_once():
    from admin.auth import sign_in_lapsed

    now = utcnow()
    assert not sign_in_lapsed((now - timedelta(hours=11, minutes=59)).timestamp(), now)
    assert sign_in_lapsed((now - timedelta(hours=12)).timestamp(), now)
    assert sign_in_lapsed(None, now)
    assert sign_in_lapsed("yesterday", now)


@pytest.fixture
def behind_a_router(config):
    config["TRUSTED_PROXIES"] = 1


def from_address(client, forwarded_for: str):
    """Requests from this client arrive with the X-Forwarded-For a router would add."""
    client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client


def test_behind_a_router_failures_are_counted_per_client_not_for_everyone(
    behind_a_router, app, session
):
    from admin.auth import MAX_ADDRESS_FAILURES

    make_user(session, "ana@agency.test")
    attacker = from_address(app.test_client(), "203.0.113.9")
    for n in range(MAX_ADDRESS_FAILURES):
        assert sign_in(attacker, f"guess{n}@agency.test", "wrong wrong wrong").status_code == 401
    assert sign_in(attacker, "guess@agency.test", "wrong wrong wrong").status_code == 429
    # A forged address in front of the router's entry changes nothing: the router's is used.
    forged = from_address(app.test_client(), "192.0.2.1, 203.0.113.9")
    assert sign_in(forged, "ana@agency.test").status_code == 429

    colleague = from_address(app.test_client(), "198.51.100.4")
    assert sign_in(colleague, "ana@agency.test").status_code == 302


def test_without_a_trusted_proxy_x_forwarded_for_cannot_dodge_the_limit(app, session):
    from admin.auth import MAX_ADDRESS_FAILURES

    make_user(session, "ana@agency.test")
    for n in range(MAX_ADDRESS_FAILURES):
        client = from_address(app.test_client(), f"192.0.2.{n}")
        assert sign_in(client, f"guess{n}@agency.test", "wrong wrong wrong").status_code == 401
    assert (
        sign_in(from_address(app.test_client(), "192.0.2.99"), "ana@agency.test").status_code == 429
    )


def test_trusted_proxies_cannot_be_negative(config):
    from app import create_app
    from settings import SettingsError

    config["TRUSTED_PROXIES"] = -1
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        create_app(config)
