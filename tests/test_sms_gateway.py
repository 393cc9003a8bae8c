"""The Twilio boundary, driven through the real twilio SDK against a local fake of its API."""

from __future__ import annotations

import io
import logging
import socket
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from twilio.twiml.messaging_response import MessagingResponse
from urllib3.exceptions import (
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from werkzeug.datastructures import MultiDict

from bot.sms import (
    TWIML_CONTENT_TYPE,
    ConsoleGateway,
    Failure,
    Fields,
    SmsGateway,
    TwilioGateway,
    classify,
    classify_network_error,
    sign,
    twiml,
    validate_signature,
)
from tests.fakes.twilio_api import POOL_NUMBER, FakeTwilio

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "secret-auth-token"
SERVICE_SID = "MG" + "2" * 32
FROM_NUMBER = "+15005550006"
PAYER = "+16175550123"
CALLBACK = "https://paytext.example.org/twilio/status"
WEBHOOK = "https://paytext.example.org/twilio/sms"


@pytest.fixture
def fake():
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        yield fake


@pytest.fixture
def gateway(fake):
    return TwilioGateway(
        ACCOUNT_SID, AUTH_TOKEN, messaging_service_sid=SERVICE_SID, base_url=fake.url
    )


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- sending -------------------------------------------------------------------------------


def test_send_through_a_messaging_service_is_accepted_and_reaches_twilio(fake, gateway):
    result = gateway.send(to=PAYER, body="Your payment of $125.00 is due Friday.")

    assert result.ok and result.failure is None and result.error_code is None
    assert result.status == "accepted"
    assert result.sid.startswith("SM") and len(result.sid) == 34
    [sent] = fake.messages
    assert sent["sid"] == result.sid
    assert sent["to"] == PAYER
    assert sent["messaging_service_sid"] == SERVICE_SID
    assert sent["from"] is None
    assert sent["body"] == "Your payment of $125.00 is due Friday."


def test_send_from_a_number_is_queued_with_that_sender(fake):
    gateway = TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, from_number=FROM_NUMBER, base_url=fake.url)

    result = gateway.send(to=PAYER, body="Hola, su pago vence el viernes. ¿Pagar? Responda SÍ 💳")

    assert result.ok and result.status == "queued"
    [sent] = fake.messages
    assert sent["from"] == FROM_NUMBER
    assert sent["messaging_service_sid"] is None
    assert sent["body"] == "Hola, su pago vence el viernes. ¿Pagar? Responda SÍ 💳"


def test_messaging_service_wins_when_a_from_number_is_also_configured(fake):
    gateway = TwilioGateway(
        ACCOUNT_SID,
        AUTH_TOKEN,
        messaging_service_sid=SERVICE_SID,
        from_number=FROM_NUMBER,
        base_url=fake.url,
    )

    assert gateway.send(to=PAYER, body="hi").ok
    assert fake.messages[0]["messaging_service_sid"] == SERVICE_SID
    assert fake.messages[0]["from"] is None


def test_status_callback_is_passed_to_twilio_only_when_given(fake, gateway):
    gateway.send(to=PAYER, body="with callback", status_callback=CALLBACK)
    gateway.send(to=PAYER, body="without callback")

    assert [m["status_callback"] for m in fake.messages] == [CALLBACK, None]


def test_gateway_needs_credentials_and_a_sender():
    with pytest.raises(ValueError, match=r"sender|from number"):
        TwilioGateway(ACCOUNT_SID, AUTH_TOKEN)
    with pytest.raises(ValueError, match="auth token"):
        TwilioGateway(ACCOUNT_SID, "", from_number=FROM_NUMBER)


@pytest.mark.parametrize(
    ("code", "status", "failure"),
    [
        (21211, 400, Failure.UNDELIVERABLE),
        (21614, 400, Failure.UNDELIVERABLE),
        (21610, 400, Failure.OPTED_OUT),
        (20429, 429, Failure.TRANSIENT),
        (20500, 500, Failure.UNKNOWN),
        (21408, 400, Failure.PERMANENT),
    ],
)
def test_twilio_errors_come_back_classified_instead_of_raised(fake, gateway, code, status, failure):
    fake.fail_for(PAYER, code, status)

    result = gateway.send(to=PAYER, body="reminder")

    assert not result.ok
    assert result.sid is None
    assert result.error_code == code
    assert result.failure is failure
    assert result.retryable is (failure is Failure.TRANSIENT)
    assert result.error_message
    assert fake.messages == []


def test_fail_for_only_affects_that_number(fake, gateway):
    fake.fail_for(PAYER, 21610)

    assert gateway.send(to="+16175550199", body="hi").ok
    assert gateway.send(to=PAYER, body="hi").failure is Failure.OPTED_OUT


def test_fail_next_fails_only_that_many_sends(fake, gateway):
    fake.fail_next(20429, status=429, times=2)

    results = [gateway.send(to=PAYER, body=f"try {n}") for n in range(3)]

    assert [r.failure for r in results] == [Failure.TRANSIENT, Failure.TRANSIENT, None]
    assert [m["body"] for m in fake.messages] == ["try 2"]


def test_a_malformed_to_number_is_undeliverable(fake, gateway):
    result = gateway.send(to="617-555-0123", body="hi")

    assert result.error_code == 21211
    assert result.failure is Failure.UNDELIVERABLE
    assert "617-555-0123" in result.error_message


def test_a_wrong_auth_token_is_a_permanent_failure(fake):
    gateway = TwilioGateway(ACCOUNT_SID, "wrong", from_number=FROM_NUMBER, base_url=fake.url)

    result = gateway.send(to=PAYER, body="hi")

    assert result.error_code == 20003
    assert result.failure is Failure.PERMANENT
    assert fake.messages == []


def test_connection_refused_is_transient():
    gateway = TwilioGateway(
        ACCOUNT_SID,
        AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url=f"http://127.0.0.1:{_unused_port()}",
    )

    result = gateway.send(to=PAYER, body="hi")

    assert not result.ok
    assert result.error_code is None
    assert result.failure is Failure.TRANSIENT
    assert "ConnectionError" in result.error_message


def test_a_server_that_never_answers_leaves_the_outcome_unknown():
    # The kernel completes the handshake for a listening socket, but nothing ever replies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        gateway = TwilioGateway(
            ACCOUNT_SID,
            AUTH_TOKEN,
            from_number=FROM_NUMBER,
            base_url=f"http://{host}:{port}",
            timeout=0.05,
        )

        result = gateway.send(to=PAYER, body="hi")

    assert result.failure is Failure.UNKNOWN
    assert (result.retryable, result.outcome_unknown) == (False, True)
    assert "Timeout" in result.error_message


def test_an_answer_slower_than_the_timeout_is_unknown_because_twilio_took_the_message(fake):
    gateway = TwilioGateway(
        ACCOUNT_SID, AUTH_TOKEN, from_number=FROM_NUMBER, base_url=fake.url, timeout=0.2
    )
    fake.answer_late(0.6)

    result = gateway.send(to=PAYER, body="hi")

    assert [m["to"] for m in fake.messages] == [PAYER]  # it went
    assert result.outcome_unknown and not result.retryable
    assert "may have gone" in result.error_message and "ReadTimeout" in result.error_message


def test_a_connection_dropped_after_the_request_went_out_is_unknown(fake, gateway):
    fake.hang_up_after_accepting()

    result = gateway.send(to=PAYER, body="hi")

    assert len(fake.messages) == 1
    assert result.failure is Failure.UNKNOWN and "ConnectionError" in result.error_message
    assert gateway.send(to=PAYER, body="again").ok  # the next send opens a new connection


def test_concurrent_sends_each_get_their_own_answer(fake, gateway):
    numbers = [f"+1617555{n:04d}" for n in range(200)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda to: (to, gateway.send(to=to, body=f"for {to}")), numbers))

    assert all(result.ok for _, result in results)
    sent_to = {m["sid"]: m["to"] for m in fake.messages}
    assert len(sent_to) == 200
    assert all(sent_to[result.sid] == to for to, result in results)


def test_both_gateways_satisfy_the_protocol(fake, gateway):
    assert isinstance(gateway, SmsGateway) and gateway.name == "twilio"
    assert isinstance(ConsoleGateway(), SmsGateway) and ConsoleGateway.name == "console"


# --- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_code", "http_status", "failure"),
    [
        (None, None, Failure.UNKNOWN),  # no answer at all: the message may exist
        (20429, 429, Failure.TRANSIENT),
        (None, 429, Failure.TRANSIENT),
        (20500, 500, Failure.UNKNOWN),  # Twilio failed, perhaps after creating the message
        (20503, 503, Failure.UNKNOWN),
        (502, 502, Failure.UNKNOWN),  # what the SDK reports for a non-JSON gateway error
        (30003, None, Failure.TRANSIENT),  # delivery report: handset unreachable
        (21610, 400, Failure.OPTED_OUT),
        (21610, None, Failure.OPTED_OUT),
        (21211, 400, Failure.UNDELIVERABLE),
        (21614, 400, Failure.UNDELIVERABLE),
        (30005, None, Failure.UNDELIVERABLE),
        (30006, None, Failure.UNDELIVERABLE),
        (20003, 401, Failure.PERMANENT),
        (21408, 400, Failure.PERMANENT),
        (None, 404, Failure.PERMANENT),
        (30007, None, Failure.PERMANENT),  # delivery report: carrier filtered it
    ],
)
def test_classify_maps_twilio_errors_to_what_to_do_next(error_code, http_status, failure):
    assert classify(error_code, http_status) is failure


def _unopened(error: Exception) -> requests.ConnectionError:
    """What requests raises when urllib3 could not open the connection at all."""
    return requests.ConnectionError(MaxRetryError(None, "/Messages.json", error))


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (_unopened(NewConnectionError(None, "Connection refused")), Failure.TRANSIENT),
        (_unopened(NameResolutionError("api.twilio.com", None, OSError())), Failure.TRANSIENT),
        (requests.ConnectTimeout("connect timed out"), Failure.TRANSIENT),
        (requests.ReadTimeout(ReadTimeoutError(None, "/", "read timed out")), Failure.UNKNOWN),
        (requests.ConnectionError(ProtocolError("Connection aborted.")), Failure.UNKNOWN),
        (requests.exceptions.ChunkedEncodingError("response ended early"), Failure.UNKNOWN),
        (requests.exceptions.SSLError("record layer failure"), Failure.UNKNOWN),
    ],
)
def test_a_network_error_is_retried_only_when_no_request_can_have_reached_twilio(error, failure):
    assert classify_network_error(error) is failure


# --- signatures ----------------------------------------------------------------------------

FORM = {"From": PAYER, "To": FROM_NUMBER, "Body": "PAGAR 50", "MessageSid": "SM" + "3" * 32}


def test_a_signed_request_validates():
    signature = sign(auth_token=AUTH_TOKEN, url=WEBHOOK, params=FORM)

    assert validate_signature(auth_token=AUTH_TOKEN, url=WEBHOOK, params=FORM, signature=signature)


@pytest.mark.parametrize(
    ("auth_token", "url", "params"),
    [
        (AUTH_TOKEN, WEBHOOK, {**FORM, "Body": "PAGAR 5000"}),
        (AUTH_TOKEN, WEBHOOK, {**FORM, "Extra": "1"}),
        (AUTH_TOKEN, WEBHOOK + "?lang=es", FORM),
        (AUTH_TOKEN, "https://evil.example.org/twilio/sms", FORM),
        ("another-token", WEBHOOK, FORM),
    ],
)
def test_a_tampered_request_does_not_validate(auth_token, url, params):
    signature = sign(auth_token=AUTH_TOKEN, url=WEBHOOK, params=FORM)

    assert not validate_signature(
        auth_token=auth_token, url=url, params=params, signature=signature
    )


@pytest.mark.parametrize("signature", [None, ""])
def test_a_missing_signature_does_not_validate(signature):
    assert not validate_signature(
        auth_token=AUTH_TOKEN, url=WEBHOOK, params=FORM, signature=signature
    )


def test_repeated_form_fields_are_all_covered_by_the_signature():
    form = MultiDict(
        [*FORM.items(), ("MediaUrl", "https://a.example/1"), ("MediaUrl", "https://a.example/2")]
    )
    signature = sign(auth_token=AUTH_TOKEN, url=WEBHOOK, params=form)
    one_dropped = MultiDict([*FORM.items(), ("MediaUrl", "https://a.example/1")])

    assert validate_signature(auth_token=AUTH_TOKEN, url=WEBHOOK, params=form, signature=signature)
    assert not validate_signature(
        auth_token=AUTH_TOKEN, url=WEBHOOK, params=one_dropped, signature=signature
    )


@pytest.mark.parametrize("fields", [Fields.from_pairs, MultiDict])
def test_the_webhook_fields_and_a_plain_multidict_sign_alike(fields):
    repeated = [*FORM.items(), ("MediaUrl", "https://a.example/2"), ("MediaUrl", "https://a/1")]
    signature = sign(auth_token=AUTH_TOKEN, url=WEBHOOK, params=MultiDict(repeated))

    assert sign(auth_token=AUTH_TOKEN, url=WEBHOOK, params=fields(repeated)) == signature
    assert validate_signature(
        auth_token=AUTH_TOKEN, url=WEBHOOK, params=fields(repeated), signature=signature
    )
    assert not validate_signature(
        auth_token=AUTH_TOKEN, url=WEBHOOK, params=fields(repeated[:-1]), signature=signature
    )


def test_signatures_refuse_an_empty_auth_token():
    with pytest.raises(ValueError, match="auth token"):
        sign(auth_token="", url=WEBHOOK, params=FORM)
    with pytest.raises(ValueError, match="auth token"):
        validate_signature(auth_token="", url=WEBHOOK, params=FORM, signature="abc=")


def test_deliver_gives_the_status_callback_form_twilio_would_post(fake, gateway):
    result = gateway.send(to=PAYER, body="hi", status_callback=CALLBACK)

    params = fake.deliver(result.sid, "undelivered", error_code=30006)
    signature = sign(auth_token=AUTH_TOKEN, url=CALLBACK, params=params)

    assert params["MessageSid"] == result.sid
    assert params["MessageStatus"] == "undelivered"
    assert params["ErrorCode"] == "30006"
    assert params["To"] == PAYER and params["From"] == POOL_NUMBER
    assert params["MessagingServiceSid"] == SERVICE_SID
    assert fake.messages[0]["status"] == "undelivered"
    assert validate_signature(
        auth_token=AUTH_TOKEN, url=CALLBACK, params=params, signature=signature
    )


# --- TwiML ---------------------------------------------------------------------------------


def _bodies(xml: str) -> list[str]:
    root = ET.fromstring(xml.encode())
    assert root.tag == "Response"
    assert all(child.tag == "Message" for child in root)
    return [child.text or "" for child in root]


def test_twiml_with_no_messages_is_an_empty_response():
    xml = twiml([])

    assert _bodies(xml) == []
    assert xml.endswith(("<Response/>", "<Response />"))


def test_twiml_holds_one_message_per_text_in_order():
    assert _bodies(twiml(["Balance: $1,234.56", "Reply PAY to pay."])) == [
        "Balance: $1,234.56",
        "Reply PAY to pay.",
    ]


def test_twiml_escapes_markup_and_keeps_accents_and_emoji():
    text = "Pay <now> & save: ¿Pagar ahora? Sí 💳"

    xml = twiml([text])

    assert "&lt;now&gt; &amp; save" in xml
    assert "💳" in xml
    assert _bodies(xml) == [text]


def test_twiml_drops_characters_xml_cannot_carry():
    assert _bodies(twiml(["PAY\x00 now\x0b"])) == ["PAY now"]


def _xml_can_carry(ch: str) -> bool:
    """XML 1.0's Char production: tab, newlines and everything from space up, bar surrogates."""
    code = ord(ch)
    return (
        ch in "\t\n\r"
        or (code >= 0x20 and not 0xD800 <= code <= 0xDFFF and code < 0xFFFE)
        or code > 0xFFFF
    )


@given(st.lists(st.text(), max_size=4))
def test_twiml_is_what_the_sdks_messaging_response_writes(texts):
    """Byte for byte, for any texts, once the characters XML cannot carry are dropped."""
    response = MessagingResponse()
    for text in texts:
        response.message("".join(filter(_xml_can_carry, text)))

    assert twiml(texts) == response.to_xml()


def test_twiml_drops_lone_surrogates_that_utf_8_cannot_encode():
    xml = twiml(["PAY \udc80now"])

    assert _bodies(xml) == ["PAY now"]
    xml.encode("utf-8")


def test_twiml_refuses_a_bare_string():
    with pytest.raises(TypeError):
        twiml("Reply PAY")


def test_twiml_content_type_is_xml():
    assert TWIML_CONTENT_TYPE.split(";")[0] in {"text/xml", "application/xml"}


# --- console gateway -----------------------------------------------------------------------


def test_console_gateway_records_logs_and_prints_each_message(caplog):
    stream = io.StringIO()
    gateway = ConsoleGateway(stream)

    with caplog.at_level(logging.INFO, logger="bot.sms"):
        result = gateway.send(to=PAYER, body="Your balance is $40.00", status_callback=CALLBACK)

    assert result.ok and result.status == "sent"
    assert result.sid.startswith("SMconsole") and len(result.sid) == 34
    [sent] = gateway.sent
    assert (sent.sid, sent.to, sent.body, sent.status_callback) == (
        result.sid,
        PAYER,
        "Your balance is $40.00",
        CALLBACK,
    )
    assert PAYER in caplog.text and "Your balance is $40.00" in caplog.text
    assert PAYER in stream.getvalue() and "Your balance is $40.00" in stream.getvalue()


def test_console_gateway_keeps_only_the_latest_messages():
    gateway = ConsoleGateway(keep=2)

    sids = [gateway.send(to=PAYER, body=str(n)).sid for n in range(3)]

    assert [m.body for m in gateway.sent] == ["1", "2"]
    assert len(set(sids)) == 3
