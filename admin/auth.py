"""Staff sign-in: Flask-Login sessions, CSRF on every form, lock-out after repeated failures."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, abort, render_template
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, UserMixin, current_user
from flask_wtf.csrf import CSRFProtect
from redis import Redis
from sqlmodel import Session, select

from admin.users import hash_password, verify_password
from models import AdminUser, Role, utcnow

MAX_FAILURES = 5
"""Failed sign-ins in a row before the account is locked."""

LOCKOUT = timedelta(minutes=15)
"""How long a lock lasts; every further failure after it starts a new one."""

SESSION_LIFETIME = timedelta(hours=12)
"""A sign-in lasts a working day; then the staff member signs in again."""

SIGNED_IN_AT = "signed_in_at"
"""The session key holding when its user signed in (POSIX seconds)."""

SIGN_IN_LAPSED = "You signed in 12 hours ago or more, so you were signed out; sign in again."

MAX_ADDRESS_FAILURES = 20
"""Failed sign-ins from one network address per LOCKOUT before it must wait, whatever emails."""

# Verifying against a real hash when the email is unknown keeps both answers equally slow, so
# the response time does not tell an attacker which emails have accounts.
_DUMMY_HASH = hash_password("not-a-real-password-for-timing")

# Routes that take no sign-in and no CSRF token because a signature or bearer token checks them.
SIGNED_PATHS = ("/sms/inbound", "/sms/status", "/stripe/webhook")
SIGNED_PREFIXES = ("/jobs/",)

SIGN_IN_REFUSED = (
    "The email or password is wrong, or this account is locked for a while after too many tries."
)
"""The one answer to every refused sign-in: a wrong password, an unknown email, a locked account.

A separate "locked" answer would confirm to anyone who tried five passwords that the email has
an account; the person locked out asks an admin, who sees the lock on the users page.
"""

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "admin.login"
login_manager.login_message = "Please sign in to see that page."
login_manager.login_message_category = "info"
login_manager.session_protection = "strong"


class StaffUser(UserMixin):
    """The signed-in staff member, detached from the database session."""

    def __init__(self, user: AdminUser):
        self.id = user.id
        self.email = user.email
        self.role = Role(user.role)
        self.session_version = user.session_version

    def get_id(self) -> str:
        """The id the session cookie keeps: the user's id and their current session version.

        Sessions are signed cookies the server keeps no list of, so a cookie copied before sign-out
        would otherwise keep working until it expires. Bumping the stored version (sign-out, a role
        change) makes every cookie that carries the old one stale; `_load_user` refuses it.
        """
        return f"{self.id}:{self.session_version}"

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


@login_manager.user_loader
def _load_user(user_id: str) -> StaffUser | None:
    """The user a session belongs to, or None (signed out) when its session version is stale.

    A bare id, from a cookie signed before session versions, is refused too: one more sign-in.
    """
    from db import get_session

    found = re.fullmatch(r"(\d+):(\d+)", user_id)
    if found is None:
        return None
    user = get_session().get(AdminUser, int(found.group(1)))
    if user is None or user.session_version != int(found.group(2)):
        return None
    return StaffUser(user)


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt: the user, or why not."""

    user: AdminUser | None
    error: str | None = None


def is_locked(user: AdminUser, now: datetime) -> bool:
    """True while the account is locked after too many failures."""
    return user.locked_until is not None and user.locked_until > now


def after_failure(failures: int, now: datetime) -> tuple[int, datetime | None]:
    """The failure count and lock end after one more wrong password."""
    failures += 1
    return failures, (now + LOCKOUT if failures >= MAX_FAILURES else None)


def authenticate(
    *, session: Session, email: str, password: str, now: datetime | None = None
) -> SignIn:
    """Check an email and password, counting failures and locking the account; caller commits.

    Every refusal gets the same words, and every attempt verifies one argon2 hash first (a dummy
    one for an unknown email, the real one even while the account is locked) so that neither the
    answer nor its time tells which emails have accounts. A locked account refuses even the right
    password until the lock ends; attempts during the lock do not extend it.
    """
    now = now or utcnow()
    user = session.exec(select(AdminUser).where(AdminUser.email == email.strip().lower())).first()
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return SignIn(None, SIGN_IN_REFUSED)
    matches = verify_password(user.password_hash, password)
    if is_locked(user, now):
        return SignIn(None, SIGN_IN_REFUSED)
    if not matches:
        user.failed_logins, user.locked_until = after_failure(user.failed_logins, now)
        user.updated_at = now
        session.add(user)
        return SignIn(None, SIGN_IN_REFUSED)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    user.updated_at = now
    session.add(user)
    return SignIn(user)


def sign_in_lapsed(signed_in_at: object, now: datetime) -> bool:
    """True once a sign-in is SESSION_LIFETIME old, or when its session does not say when it was.

    The cookie's own expiry slides: Flask signs it afresh on every request, so a session used
    at least every 12 hours (or a copy of its cookie replayed as often) would never end.
    """
    if not isinstance(signed_in_at, int | float) or isinstance(signed_in_at, bool):
        return True
    return now.timestamp() - signed_in_at >= SESSION_LIFETIME.total_seconds()


def _address_key(address: str) -> str:
    return f"paytext:admin:login-failures:{address}"


def address_blocked(redis: Redis, address: str) -> bool:
    """True when one address failed too often lately (guessing across many emails)."""
    count = redis.get(_address_key(address))
    return count is not None and int(count) >= MAX_ADDRESS_FAILURES


def count_address_failure(redis: Redis, address: str) -> None:
    """Count a failed sign-in from an address; the count lapses LOCKOUT after the first one."""
    key = _address_key(address)
    if redis.incr(key) == 1:
        redis.expire(key, int(LOCKOUT.total_seconds()))


def role_required(role: Role) -> Callable:
    """Let only signed-in users with this role through; others get 403."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.role != role:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator


def _exempt_signed_routes(app: Flask) -> None:
    """Webhooks and the jobs trigger are verified by signatures or bearer tokens, not cookies."""
    for rule in app.url_map.iter_rules():
        if rule.rule in SIGNED_PATHS or rule.rule.startswith(SIGNED_PREFIXES):
            csrf.exempt(app.view_functions[rule.endpoint])


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, not opened on the signed routes.

    Twilio, Stripe and the scheduler send no cookie and must not get one; opening a session
    anyway cost every webhook call a signing serializer (about 5% of a text's handling).
    """

    def open_session(self, app: Flask, request):
        if request.path in SIGNED_PATHS or request.path.startswith(SIGNED_PREFIXES):
            return None  # Flask stands a read-only empty NullSession in
        return super().open_session(app, request)


def _cookie_flags(app: Flask) -> None:
    config = app.config
    production = not (app.debug or app.testing) and (
        config["SMS_BACKEND"] == "twilio" or config["PAYMENT_BACKEND"] == "stripe"
    )
    # Over plain http (development, tests) a Secure cookie would never come back.
    secure = production or str(config["PUBLIC_BASE_URL"]).startswith("https://")
    config["SESSION_COOKIE_SECURE"] = secure
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["REMEMBER_COOKIE_SECURE"] = secure
    config["REMEMBER_COOKIE_HTTPONLY"] = True
    config["REMEMBER_COOKIE_SAMESITE"] = "Lax"
    config["PERMANENT_SESSION_LIFETIME"] = SESSION_LIFETIME


def init_app(app: Flask) -> None:
    """Install CSRF protection, Flask-Login, cookie flags and the upload limit."""
    _cookie_flags(app)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_UPLOAD_MB"]) * 1024 * 1024
    # A form left open all day still submits; the token dies with the session anyway.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", int(SESSION_LIFETIME.total_seconds()))
    app.session_interface = _CookieSessions()
    csrf.init_app(app)
    _exempt_signed_routes(app)
    login_manager.init_app(app)

    @app.errorhandler(413)
    def too_large(_error):
        limit = app.config["MAX_UPLOAD_MB"]
        return render_template("admin/error.html", status=413, limit=limit), 413
