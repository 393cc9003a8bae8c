"""Staff accounts: argon2 password hashes (memory-hard), never the password itself."""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from models import AdminUser, Role, utcnow

_hasher = PasswordHasher()
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 12


class UserError(ValueError):
    """A user that cannot be created as asked."""


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when the password matches the stored hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(*, session: Session, email: str, password: str, role: Role) -> AdminUser:
    """Add a staff account; the email must be new and the password long enough.

    UserError, the session to be rolled back, when the same email was added meanwhile (the
    form sent twice: hashing the password takes long enough for both to pass the check).
    """
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise UserError(f"{email!r} is not an email address")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must be at least {MIN_PASSWORD} characters")
    if session.exec(select(AdminUser).where(AdminUser.email == email)).first():
        raise UserError(f"a user with email {email} already exists")
    user = AdminUser(email=email, password_hash=hash_password(password), role=role)
    user.updated_at = utcnow()
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise UserError(f"a user with email {email} already exists") from exc
    return user


def end_sessions(user: AdminUser) -> None:
    """Sign the user out everywhere: every session cookie carrying the old version is refused.

    Called on sign-out and when an admin changes the user's role; caller commits. It ends all of
    the user's sessions (other browsers, a cookie copied before), not only the one signing out:
    the usual trade-off of one version per user, which needs no table of sessions.
    """
    user.session_version += 1
    user.updated_at = utcnow()
