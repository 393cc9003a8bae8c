"""Helpers for the admin tests: staff accounts, CSRF tokens from real pages, signed-in posts."""

from __future__ import annotations

import re

from sqlmodel import Session

from admin.users import create_user
from models import AdminUser, Role

PASSWORD = "correct horse battery staple"
_TOKEN = re.compile(r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"')


def make_user(session: Session, email: str = "admin@agency.test", role: Role = Role.ADMIN):
    """A staff account with PASSWORD."""
    user = create_user(session=session, email=email, password=PASSWORD, role=role)
    session.commit()
    return user


def csrf_token(client, path: str = "/admin/login") -> str:
    """The CSRF token a page hands this client's session, read from its HTML."""
    page = client.get(path)
    found = _TOKEN.search(page.get_data(as_text=True))
    assert found, f"no CSRF token on {path} ({page.status_code})"
    return found.group(1)


def sign_in(client, email: str, password: str = PASSWORD, follow: bool = False):
    """Post the sign-in form as a browser would."""
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": csrf_token(client)},
        follow_redirects=follow,
    )


def signed_in(client, session: Session, role: Role = Role.ADMIN, email: str | None = None):
    """Create a user with `role`, sign the client in, and return the user."""
    user = make_user(session, email or f"{role}@agency.test", role)
    response = sign_in(client, user.email)
    assert response.status_code == 302, response.get_data(as_text=True)
    return user


def post_form(client, url: str, data: dict | None = None, prefix: str | None = None, **kwargs):
    """Post a form with a valid CSRF token under the field name its (prefixed) form expects."""
    name = f"{prefix}-csrf_token" if prefix else "csrf_token"
    fields = {(f"{prefix}-{k}" if prefix else k): v for k, v in (data or {}).items()}
    signed_in_page = client.get("/admin/enroll")
    page = "/admin/enroll" if signed_in_page.status_code == 200 else "/admin/login"
    fields[name] = csrf_token(client, page)
    return client.post(url, data=fields, **kwargs)


def reload(session: Session, model, row_id: int):
    """A fresh copy of a row, as another request would see it."""
    session.expire_all()
    return session.get(model, row_id)


__all__ = [
    "PASSWORD",
    "AdminUser",
    "csrf_token",
    "make_user",
    "post_form",
    "reload",
    "sign_in",
    "signed_in",
]
