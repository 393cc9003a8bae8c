"""The bot's database side: load a phone's facts and state, carry out the dialogue's actions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.dialogue import Policy
from jobs.schedule import parse_business_hours
from money import parse_dollars


def policy(config: Mapping[str, Any]) -> Policy:
    """The agency rules the dialogue applies, from settings."""
    return Policy(
        agency_name=config["AGENCY_NAME"],
        agency_phone=config["AGENCY_PHONE"],
        hours=parse_business_hours(config["BUSINESS_HOURS"]),
        per_payment_cap_cents=parse_dollars(config["MAX_PAYMENT"]),
        monthly_cap_cents=parse_dollars(config["MONTHLY_PAYMENT_CAP"]),
    )
