"""HTTP routes of the bot: Twilio webhooks and the development phone simulator."""

from flask import Blueprint

bp = Blueprint("bot", __name__)
