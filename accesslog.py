"""Gunicorn's access log without the secret part of card and approval links.

A /pay/card/<token> or /pay/auth/<token> link lets whoever holds it save a card or approve a
payment until it is used or expires: written into the access log, anyone who can read the logs
could use it. Nor what staff search the cases for (/admin/cases?q=...): a payer's name or
phone number. The Procfile's web process logs through AccessLogger.
"""

from __future__ import annotations

import re

from gunicorn.glogging import Logger

from bot.redact import LINK_MARKER

# Wider than bot.redact's pattern for texts: a request path can carry anything up to the next
# '/', '?' or '#', and a text's punctuation after a link never reaches this log.
_LINK_TOKEN = re.compile(r"(/pay/(?:card|auth)/)[^/\s?#\"]+")
# The staff case search's words, and the phone simulator's number (development only), in a
# query string alone (gunicorn's %(q)s) or in a URL (the request line, the referer).
_SEARCHED = re.compile(r"((?:^|[?&])(?:q|phone)=)[^&\s#\"]*")


def redact(text: str) -> str:
    """The text with every card or approval link token, and every search for a payer, replaced
    by LINK_MARKER."""
    return _SEARCHED.sub(rf"\g<1>{LINK_MARKER}", _LINK_TOKEN.sub(rf"\g<1>{LINK_MARKER}", text))


class AccessLogger(Logger):
    """gunicorn's Logger, its access-log atoms redacted (the request line, path, referer...)."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        return {
            name: redact(value)
            if isinstance(value, str) and ("/pay/" in value or "=" in value)
            else value
            for name, value in atoms.items()
        }
