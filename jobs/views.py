"""HTTP routes of the jobs package."""

from flask import Blueprint

bp = Blueprint("jobs", __name__)
