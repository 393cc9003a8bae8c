"""HTTP routes of the jobs package: triggers for an external scheduler, behind a bearer token."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request

from jobs.reminders import dispatch_due

bp = Blueprint("jobs", __name__)


def _refusal() -> Response | None:
    """404 when triggers are off (no JOBS_TOKEN), 401 without a token, 403 for a wrong one."""
    expected = current_app.config.get("JOBS_TOKEN")
    if not expected:
        response = jsonify(error="not found")
        response.status_code = 404
        return response
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        response = jsonify(error="send Authorization: Bearer <JOBS_TOKEN>")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="paytext-jobs"'
        return response
    # Constant-time, so response times do not reveal how much of a guess was right.
    if not hmac.compare_digest(token.strip().encode(), str(expected).encode()):
        response = jsonify(error="wrong token")
        response.status_code = 403
        return response
    return None


@bp.post("/jobs/reminders/dispatch")
def dispatch_reminders():
    """Send the reminders that are due now; `?dry_run=1` only reports what would go."""
    refusal = _refusal()
    if refusal is not None:
        return refusal
    dry_run = request.args.get("dry_run", "").lower() in {"1", "true", "yes"}
    return jsonify(dispatch_due(dry_run=dry_run).as_dict())
