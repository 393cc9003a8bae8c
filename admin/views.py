"""HTTP routes of the admin package."""

from flask import Blueprint

bp = Blueprint("admin", __name__)
