"""HTTP routes of the billing package."""

from flask import Blueprint

bp = Blueprint("billing", __name__)
