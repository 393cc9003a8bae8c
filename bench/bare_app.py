"""The baseline for bench.webhook: a bare Flask endpoint answering fixed TwiML."""

from flask import Flask, Response

TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>OK</Message></Response>'


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/sms/inbound")
    def inbound():
        return Response(TWIML, content_type="text/xml; charset=utf-8")

    return app
