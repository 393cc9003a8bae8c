"""Helpers for webhook tests: Twilio-shaped requests, signed with the SDK's own validator."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

from bot import sms

PUBLIC = "http://paytext.test"
_sids = itertools.count(1)


def new_sid() -> str:
    return f"SM{next(_sids):032x}"


def inbound_params(body: str, phone: str = "+16175550134", sid: str | None = None, **extra):
    params = {
        "MessageSid": sid or new_sid(),
        "AccountSid": "AC" + "0" * 32,
        "From": phone,
        "To": "+18005550100",
        "Body": body,
        "NumMedia": "0",
    }
    params.update(extra)
    return params


def post_signed(client, path: str, params: dict, token: str | None):
    """POST form params to `path` with the X-Twilio-Signature Twilio would send (None: unsigned)."""
    headers = {}
    if token is not None:
        headers[sms.SIGNATURE_HEADER] = sms.sign(auth_token=token, url=PUBLIC + path, params=params)
    return client.post(path, data=params, headers=headers)


def replies(response) -> list[str]:
    """The <Message> bodies of a TwiML response (which must parse)."""
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/xml")
    root = ET.fromstring(response.data)
    assert root.tag == "Response"
    return [message.text or "" for message in root.iter("Message")]
