"""HTTP routes of the admin package: staff pages under /admin (sign-in required on every one)."""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask import (
    session as cookie_session,
)
from flask_login import current_user, login_user, logout_user
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from admin import charts, forms, service
from admin.auth import (
    SIGN_IN_LAPSED,
    SIGNED_IN_AT,
    StaffUser,
    address_blocked,
    authenticate,
    count_address_failure,
    login_manager,
    role_required,
    sign_in_lapsed,
)
from admin.service import AdminError
from admin.users import UserError, create_user, end_sessions
from bot.outbound import Held
from db import get_session
from models import AdminUser, AppointmentKind, Case, EnrollmentStatus, Role, utcnow
from money import format_cents
from phones import format_phone

bp = Blueprint("admin", __name__)
log = logging.getLogger(__name__)

PUBLIC_ENDPOINTS = frozenset({"admin.login"})
DASHBOARD_DAYS = (7, 14, 30)


@bp.before_request
def require_sign_in():
    """Every admin page needs a signed-in user, so a new route cannot forget to ask."""
    if current_user.is_authenticated and sign_in_lapsed(cookie_session.get(SIGNED_IN_AT), utcnow()):
        logout_user()
        cookie_session.clear()
        flash(SIGN_IN_LAPSED, "info")
    if request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        if request.endpoint == "admin.logout":
            # Pressed in a tab left open after the session ended: what was asked is done.
            flash(SIGNED_OUT, "info")
            return redirect(url_for("admin.login"))
        if request.method != "GET":
            return _signed_out_form()
        return login_manager.unauthorized()
    return None


SIGNED_OUT = "You are signed out."

SIGNED_OUT_FORM = (
    "You were signed out, so what you sent was not saved and no text went out. Sign in, "
    "then send it again."
)


def _signed_out_form():
    """A form sent after its session ended (signed out elsewhere, say): back to its page.

    Its own address answers only POST, so returning there after sign-in was a 405; the page
    the form was on (the Referer, when it is a staff page) is where it can be sent again.
    """
    came_from = urlsplit(request.referrer or "")
    page = None
    if came_from.netloc == request.host:
        page = came_from.path + (f"?{came_from.query}" if came_from.query else "")
    flash(SIGNED_OUT_FORM, "error")
    return redirect(url_for("admin.login", next=_safe_next(page)))


@bp.after_request
def _staff_page_headers(response):
    """Staff pages show payers' cases: never cached by the browser or a proxy, never framed."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _zone() -> str:
    return current_app.config["DEFAULT_TIMEZONE"]


def local(
    moment: datetime | None, fmt: str = "%b %-d, %Y %-I:%M %p %Z", *, zone: str | None = None
) -> str:
    """A UTC instant shown in `zone` (a case's), else in the agency's time zone."""
    if moment is None:
        return ""
    return moment.astimezone(ZoneInfo(zone or _zone())).strftime(fmt)


def balance(cents: int) -> str:
    """A balance as staff read it on every page: what is owed, or a credit said as one.

    '-$50.00' reads as owed, or as nothing; the payer's texts say "$50.00 in credit" too.
    """
    return f"{format_cents(-cents)} in credit" if cents < 0 else format_cents(cents)


def case_zone(case: Case) -> str:
    """The zone a case's times are shown and entered in: the one the payer's texts use."""
    return service.case_zones(session=get_session(), cases=[case], default=_zone())[case.id]


@bp.context_processor
def _layout() -> dict:
    extra = {
        "local": local,
        "money": format_cents,
        "balance": balance,
        "phone": format_phone,
        "agency_zone": _zone(),
        "logout_form": forms.ButtonForm(prefix="logout", formdata=None),
    }
    if current_user.is_authenticated:
        extra["waiting_handoffs"] = service.waiting_handoff_count(session=get_session())
    return extra


@bp.app_template_global()
def first_with_error(field) -> bool:
    """True for the page's first field with an error: it takes the focus when the page loads.

    A refused form can sit far down a page (the case page's reply, under its conversation);
    the browser scrolls to the focused field, and a screen reader reads its label and error.
    """
    if not field.errors or g.get("error_focused"):
        return False
    g.error_focused = True
    return True


@bp.errorhandler(CSRFError)
def csrf_failed(error: CSRFError):
    return render_template("admin/error.html", status=400, reason=error.description), 400


@bp.errorhandler(403)
def forbidden(_error):
    return render_template("admin/error.html", status=403), 403


@bp.errorhandler(404)
def not_found(_error):
    return render_template("admin/error.html", status=404), 404


# --- Sign-in ---------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a page inside /admin: anything else would make sign-in an open redirect.

    A page is an address that answers GET: a form's own address (a reply's, sign-out's)
    would greet the staff member with 405 Method Not Allowed after signing in.
    """
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin"):
        return url_for("admin.dashboard")
    if not _shows_a_page(parts.path):
        return url_for("admin.dashboard")
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _shows_a_page(path: str) -> bool:
    """True when GET on this path reaches a route (a 404 for a missing row is still a page)."""
    try:
        current_app.create_url_adapter(request).match(path, method="GET")
    except RequestRedirect:
        return True  # /admin -> /admin/, say
    except HTTPException:
        return False
    return True


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with email and password."""
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    form = forms.LoginForm()
    if not form.is_submitted():
        return render_template("admin/login.html", form=form)
    if not form.validate():
        return render_template("admin/login.html", form=form), 400
    redis = current_app.extensions["redis"]
    address = request.remote_addr or "unknown"
    if address_blocked(redis, address):
        form.form_errors.append(
            "Too many failed sign-ins from this network. Wait 15 minutes and try again."
        )
        return render_template("admin/login.html", form=form), 429
    session = get_session()
    outcome = authenticate(session=session, email=form.email.data, password=form.password.data)
    session.commit()
    if outcome.user is not None:
        cookie_session.clear()  # a fresh session (and CSRF token) for the signed-in user
        cookie_session.permanent = True  # the cookie: PERMANENT_SESSION_LIFETIME from last use
        cookie_session[SIGNED_IN_AT] = utcnow().timestamp()  # the sign-in: from now, at most
        login_user(StaffUser(outcome.user))
        return redirect(_safe_next(request.args.get("next")))
    count_address_failure(redis, address)
    # 401 for a locked account too: a 429 would tell the guesser that the email has an account.
    form.form_errors.append(outcome.error)
    return render_template("admin/login.html", form=form), 401


@bp.post("/logout")
def logout():
    """Sign out: end every session of the user on the server, then forget this one's cookie.

    Clearing the cookie alone would leave a copy of it (another tab, a stolen one) signed in.
    """
    if not forms.ButtonForm(prefix="logout").validate_on_submit():
        abort(400)
    session = get_session()
    user = session.get(AdminUser, current_user.id)
    if user is not None:
        end_sessions(user)
        session.add(user)
        session.commit()
    logout_user()
    cookie_session.clear()
    flash(SIGNED_OUT, "info")
    return redirect(url_for("admin.login"))


# --- Dashboard -------------------------------------------------------------------------------


@bp.get("/")
def dashboard():
    """Texts, payments, opt-outs and reply rates per day, as charts and tables."""
    days = request.args.get("days", type=int)
    days = days if days in DASHBOARD_DAYS else 14
    data = service.dashboard(session=get_session(), zone=_zone(), days=days)
    labels = [day.strftime("%b %-d") for day in data.days]
    text_chart = charts.bar_chart(
        chart_id="texts",
        title=f"Texts per day, last {days} days",
        labels=labels,
        series=[
            charts.Series("Sent", [d.sent for d in data.texts], 0),
            charts.Series("Delivered", [d.delivered for d in data.texts], 1),
            charts.Series("Failed", [d.failed for d in data.texts], 2),
        ],
    )
    payment_count_chart = charts.bar_chart(
        chart_id="payment-count",
        title=f"Payments by text per day, last {days} days",
        labels=labels,
        series=[charts.Series("Payments", [d.count for d in data.payments], 0)],
    )
    payment_dollar_chart = charts.bar_chart(
        chart_id="payment-dollars",
        title=f"Dollars paid by text per day, last {days} days",
        labels=labels,
        series=[charts.Series("Dollars", [d.cents / 100 for d in data.payments], 1)],
        fmt=lambda v: f"${v:,.0f}",
    )
    opt_out_chart = charts.bar_chart(
        chart_id="opt-outs",
        title=f"Numbers that opted out per day, last {days} days",
        labels=labels,
        series=[charts.Series("Numbers opted out", [n for _, n in data.opt_outs], 2)],
    )
    reply_chart = charts.bar_chart(
        chart_id="reply-rate",
        title=f"Share of reminders answered within 48 hours, last {days} days",
        labels=labels,
        series=[
            charts.Series("Reply rate", [round((d.rate or 0) * 100, 1) for d in data.replies], 3)
        ],
        fmt=lambda v: f"{v:g}%",
        max_value=100,
    )
    return render_template(
        "admin/dashboard.html",
        data=data,
        days=days,
        day_choices=DASHBOARD_DAYS,
        charts={
            "texts": text_chart,
            "payment_count": payment_count_chart,
            "payment_dollars": payment_dollar_chart,
            "opt_outs": opt_out_chart,
            "reply_rate": reply_chart,
        },
        dispatch_form=forms.ButtonForm(prefix="dispatch"),
    )


@bp.post("/reminders/dispatch")
@role_required(Role.ADMIN)
def dispatch_reminders():
    """Send the reminders that are due now: the same dispatch as the CLI and the scheduler."""
    from jobs.reminders import dispatch_due

    if not forms.ButtonForm(prefix="dispatch").validate_on_submit():
        abort(400)
    summary = dispatch_due()
    skipped = ", ".join(
        f"{n} {str(reason).replace('_', ' ')}" for reason, n in sorted(summary.skipped.items())
    )
    flash(
        f"Due reminders dispatched: {summary.due} due, {summary.enqueued} queued to send, "
        f"{summary.deferred} deferred to allowed hours, "
        f"{sum(summary.skipped.values())} skipped{f' ({skipped})' if skipped else ''}; "
        f"{summary.invites_due} opt-in invitation(s) held for quiet hours due, queued to send.",
        "success",
    )
    return redirect(url_for("admin.dashboard"))


# --- Cases -----------------------------------------------------------------------------------


@bp.get("/cases")
def cases():
    """Search and filter cases, a page at a time."""
    # PostgreSQL refuses a NUL in a string it is sent; no case number or name holds one.
    query = request.args.get("q", "").replace("\x00", "")[:100]
    case_filter = request.args.get("filter") or None
    if case_filter not in service.FILTERS:
        case_filter = None
    today = utcnow().astimezone(ZoneInfo(_zone())).date()
    page = service.search_cases(
        session=get_session(),
        query=query,
        case_filter=case_filter,
        page=request.args.get("page", 1, type=int),
        today=today,
    )
    return render_template(
        "admin/cases.html",
        page=page,
        query=query,
        case_filter=case_filter,
        filters=service.FILTERS,
    )


def _case_forms(detail: service.CaseDetail) -> dict:
    phones = forms.choices([(p, format_phone(p)) for p in detail.textable_phones])
    reply = forms.ReplyForm(prefix="reply", formdata=None)
    reply.phone.choices = phones
    waiting = [h.phone for h in detail.waiting_handoffs if h.phone in detail.textable_phones]
    if waiting:
        reply.phone.data = waiting[0]
    card = forms.PhoneChoiceForm(prefix="card", formdata=None)
    card.phone.choices = phones
    return {
        "reply_form": reply,
        "card_form": card,
        "appointment_form": forms.AppointmentForm(prefix="appt", formdata=None),
        "move_forms": {
            a.id: forms.MoveAppointmentForm(prefix=f"move{a.id}", formdata=None)
            for a in detail.appointments
        },
        "cancel_form": forms.ButtonForm(prefix="cancel", formdata=None),
        "close_form": forms.ButtonForm(prefix="close", formdata=None),
        "reviewed_form": forms.ButtonForm(prefix="reviewed", formdata=None),
        "refund_forms": {
            p.id: forms.RefundForm(prefix=f"refund{p.id}", formdata=None) for p in detail.payments
        },
    }


def _render_case(case_id: int, status: int = 200, turns_page: int = 1, **overrides):
    detail = service.case_detail(session=get_session(), case_id=case_id, turns_page=turns_page)
    if detail is None:
        abort(404)
    page_forms = _case_forms(detail)
    zone_phone = service.clock_phone(detail.enrollments)
    for name, form in overrides.items():
        if name in ("move_forms", "refund_forms"):
            page_forms[name].update(form)
        else:
            page_forms[name] = form
    return (
        render_template(
            "admin/case.html",
            detail=detail,
            case=detail.case,
            refundable=service.refundable_cents,
            zone=service.case_zone(detail.case, _zone(), zone_phone),
            zone_phone=zone_phone,
            appointment_kinds=AppointmentKind,
            EnrollmentStatus=EnrollmentStatus,
            **page_forms,
        ),
        status,
    )


@bp.get("/cases/<id:case_id>")
def case(case_id: int):
    """The case: conversation (a page at a time), payments, reminders, appointments, enrollments."""
    return _render_case(case_id, turns_page=request.args.get("page", 1, type=int))


@bp.get("/cases/<id:case_id>/export.csv")
def export_case(case_id: int):
    """The case's consent records and every turn, as CSV."""
    detail = service.case_detail(session=get_session(), case_id=case_id)
    if detail is None:
        abort(404)
    zone = service.case_zone(detail.case, _zone(), service.clock_phone(detail.enrollments))
    filename = f"case-{detail.case.case_number}-conversation.csv"

    def lines():
        # The body is sent after the view's request has ended and its session is closed. The
        # rows are read in a session of the stream's own, asked for while the stream runs, so
        # the request's teardown at its end (or when the client hangs up) closes it; one
        # reopened from the view's closed session held its connection until garbage-collected.
        rows = service.export_rows(session=get_session(), case_id=case_id, zone=zone)
        yield from service.csv_text(rows)

    return Response(
        stream_with_context(lines()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@bp.post("/cases/<id:case_id>/reply")
def reply(case_id: int):
    """A staff member texts the payer; the turn is logged as theirs and handoffs are answered."""
    detail = service.case_detail(session=get_session(), case_id=case_id)
    if detail is None:
        abort(404)
    form = forms.ReplyForm(prefix="reply")
    form.phone.choices = forms.choices([(p, format_phone(p)) for p in detail.textable_phones])
    form.agency = current_app.config["AGENCY_NAME"]
    if not form.validate_on_submit():
        return _render_case(case_id, 400, reply_form=form)
    if not _claim_send(form):
        return _sent_already(case_id, "conversation")
    session = get_session()
    try:
        sent = service.send_staff_reply(
            session=session,
            config=current_app.config,
            case_id=case_id,
            phone=form.phone.data,
            text=form.text.data,
            staff_user_id=current_user.id,
        )
    except AdminError as exc:
        session.rollback()
        _release_send(form)
        form.phone.errors = [*form.phone.errors, str(exc)]
        return _render_case(case_id, 400, reply_form=form)
    session.commit()
    _flash_sent(sent, "Reply sent.", form)
    return redirect(url_for("admin.case", case_id=case_id, _anchor="conversation"))


@bp.post("/cases/<id:case_id>/card-link")
def card_link(case_id: int):
    """Text the payer a link to add a card."""
    detail = service.case_detail(session=get_session(), case_id=case_id)
    if detail is None:
        abort(404)
    form = forms.PhoneChoiceForm(prefix="card")
    form.phone.choices = forms.choices([(p, format_phone(p)) for p in detail.textable_phones])
    if not form.validate_on_submit():
        return _render_case(case_id, 400, card_form=form)
    if not _claim_send(form):
        return _sent_already(case_id, None)
    session = get_session()
    try:
        sent = service.send_card_link(
            session=session,
            config=current_app.config,
            case_id=case_id,
            phone=form.phone.data,
            staff_user_id=current_user.id,
        )
    except AdminError as exc:
        session.rollback()
        _release_send(form)
        form.phone.errors = [*form.phone.errors, str(exc)]
        return _render_case(case_id, 400, card_form=form)
    session.commit()
    _flash_sent(sent, "Card link sent.", form)
    return redirect(url_for("admin.case", case_id=case_id))


_MAY_HAVE_GONE = (
    "Twilio did not answer, so the text may or may not have gone; it is logged on the "
    "conversation as unknown. Wait for its delivery report before sending it again."
)


SEND_ONCE_SECONDS = 24 * 3600
"""How long a staff form's nonce is remembered: a double-click or a resend from the browser's
history within it sends nothing more."""


def _send_key(form: forms.SendOnceForm) -> str | None:
    nonce = (form.nonce.data or "")[:40]
    return f"paytext:admin:sent:{nonce}" if nonce else None


def _claim_send(form: forms.SendOnceForm) -> bool:
    """False when this form (its nonce) was sent before: its text went, or is going."""
    key = _send_key(form)
    if key is None:  # a page from before forms carried a nonce
        return True
    try:
        return bool(current_app.extensions["redis"].set(key, "1", nx=True, ex=SEND_ONCE_SECONDS))
    except RedisError:
        # Sending matters more than guarding a double-click; the staff member sees the result.
        log.warning("staff form sent without its double-send guard: Redis did not answer")
        return True


def _release_send(form: forms.SendOnceForm) -> None:
    """The text did not go (refused, or Twilio certainly did not take it): it may be sent again."""
    key = _send_key(form)
    if key is None:
        return
    try:
        current_app.extensions["redis"].delete(key)
    except RedisError:
        log.warning("could not release a staff form's double-send guard: Redis did not answer")


def _sent_already(case_id: int, anchor: str | None):
    flash("That was already sent (the form was sent twice); it was not sent again.", "info")
    return redirect(url_for("admin.case", case_id=case_id, _anchor=anchor))


def _flash_sent(sent, success: str, form: forms.SendOnceForm | None = None) -> None:
    if form is not None and not sent.result.ok and not sent.result.outcome_unknown:
        _release_send(form)
    if sent.result.ok:
        flash(success, "success")
    elif sent.result.outcome_unknown:
        flash(_MAY_HAVE_GONE, "warning")
    else:
        flash(
            f"The text could not be sent ({sent.result.error_message or 'provider error'}); "
            "it is logged on the conversation.",
            "error",
        )


@bp.post("/cases/<id:case_id>/appointments")
def add_appointment(case_id: int):
    """Schedule an appointment; its reminders are planned."""
    form = forms.AppointmentForm(prefix="appt")
    form.agency = current_app.config["AGENCY_NAME"]
    if not form.validate_on_submit():
        return _render_case(case_id, 400, appointment_form=form)
    session = get_session()
    case = session.get(Case, case_id)
    if case is None:
        abort(404)
    try:
        _, added = service.add_appointment(
            session=session,
            case_id=case_id,
            starts_at=service.local_to_utc(form.day.data, form.time.data, case_zone(case)),
            kind=AppointmentKind(form.kind.data),
            location=form.location.data,
            video_link=form.video_link.data,
        )
    except AdminError as exc:
        session.rollback()
        form.day.errors = [*form.day.errors, str(exc)]
        return _render_case(case_id, 400, appointment_form=form)
    session.commit()
    if added:
        flash("Appointment added; its reminders are planned.", "success")
    else:
        flash("That appointment was already scheduled (sent twice?); nothing changed.", "info")
    return redirect(url_for("admin.case", case_id=case_id, _anchor="appointments"))


def _appointment_case(appointment_id: int) -> Case:
    from models import Appointment

    session = get_session()
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        abort(404)
    return session.get(Case, appointment.case_id)


@bp.post("/appointments/<id:appointment_id>/move")
def move_appointment(appointment_id: int):
    """Move an appointment; its reminders are re-planned."""
    case = _appointment_case(appointment_id)
    case_id = case.id
    form = forms.MoveAppointmentForm(prefix=f"move{appointment_id}")
    if not form.validate_on_submit():
        return _render_case(case_id, 400, move_forms={appointment_id: form})
    session = get_session()
    try:
        told = service.move_appointment(
            session=session,
            appointment_id=appointment_id,
            starts_at=service.local_to_utc(form.day.data, form.time.data, case_zone(case)),
        )
    except AdminError as exc:
        session.rollback()
        form.day.errors = [*form.day.errors, str(exc)]
        return _render_case(case_id, 400, move_forms={appointment_id: form})
    session.commit()
    if told:
        flash(
            "Appointment moved. The payer was reminded of the old time, so they will be texted "
            "the new one (in their texting hours).",
            "success",
        )
    else:
        flash("Appointment moved; its reminders are re-planned.", "success")
    return redirect(url_for("admin.case", case_id=case_id, _anchor="appointments"))


@bp.post("/appointments/<id:appointment_id>/cancel")
def cancel_appointment(appointment_id: int):
    """Cancel an appointment; its reminders are dropped."""
    case_id = _appointment_case(appointment_id).id
    if not forms.ButtonForm(prefix="cancel").validate_on_submit():
        abort(400)
    session = get_session()
    try:
        told = service.cancel_appointment(session=session, appointment_id=appointment_id)
    except AdminError as exc:
        session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("admin.case", case_id=case_id, _anchor="appointments"))
    session.commit()
    if told:
        flash(
            "Appointment canceled. The payer was reminded of it, so they will be texted that "
            "it is canceled (in their texting hours).",
            "success",
        )
    else:
        flash("Appointment canceled; its reminders are canceled too.", "success")
    return redirect(url_for("admin.case", case_id=case_id, _anchor="appointments"))


@bp.post("/payments/<id:payment_id>/refund")
@role_required(Role.ADMIN)
def refund(payment_id: int):
    """Refund all or part of a payment (admins only)."""
    from models import Payment

    session = get_session()
    payment = session.get(Payment, payment_id)
    if payment is None:
        abort(404)
    form = forms.RefundForm(prefix=f"refund{payment_id}")
    if not form.validate_on_submit():
        return _render_case(payment.case_id, 400, refund_forms={payment_id: form})
    try:
        made = service.refund(
            session=session,
            payment_id=payment_id,
            amount_cents=form.amount_cents,
            admin_user_id=current_user.id,
            nonce=(form.nonce.data or "")[:40] or None,
        )
    except AdminError as exc:
        session.rollback()
        form.amount.errors = [*form.amount.errors, str(exc)]
        return _render_case(payment.case_id, 400, refund_forms={payment_id: form})
    session.commit()
    flash(f"Refund of {format_cents(made.amount_cents)} requested.", "success")
    return redirect(url_for("admin.case", case_id=payment.case_id, _anchor="payments"))


@bp.post("/payments/<id:payment_id>/reviewed")
def mark_payment_reviewed(payment_id: int):
    """A flagged payment checked: the case page stops asking staff to look at it."""
    from models import Payment

    if not forms.ButtonForm(prefix="reviewed").validate_on_submit():
        abort(400)
    session = get_session()
    payment = session.get(Payment, payment_id)
    if payment is None:
        abort(404)
    try:
        service.mark_payment_reviewed(
            session=session, payment_id=payment_id, staff_user_id=current_user.id
        )
    except AdminError as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash(f"The payment of {format_cents(payment.amount_cents)} is marked reviewed.", "success")
    return redirect(url_for("admin.case", case_id=payment.case_id, _anchor="payments"))


# --- Enroll ----------------------------------------------------------------------------------


def _enroll_page(form: forms.EnrollForm, status: int):
    preview = service.consent_text(
        config=current_app.config, case_number="[case number]", phone="[this number]"
    )
    return render_template("admin/enroll.html", form=form, consent_preview=preview), status


@bp.route("/enroll", methods=["GET", "POST"])
def enroll():
    """Enroll a phone number on a case (new or existing) and text the double opt-in."""
    form = forms.EnrollForm()
    if request.method == "GET":
        form.case_number.data = request.args.get("case", "")[:32]
    config = current_app.config
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return _enroll_page(form, status)
    new_case = None
    if form.new_case_given():
        missing = [
            field
            for field in (form.payer_name, form.amount_due, form.balance)
            if not (field.data or "").strip()
        ]
        for field in missing:
            field.errors = [*field.errors, f"{field.label.text} is needed for a new case."]
        if missing:
            return _enroll_page(form, 400)
        new_case = service.NewCase(
            payer_name=form.payer_name.data,
            amount_due_cents=form.amount_due_cents,
            balance_cents=form.balance_cents,
            next_due_date=form.next_due_date.data,
        )
    session = get_session()
    try:
        enrolled = service.enroll_number(
            session=session,
            config=config,
            case_number=form.case_number.data,
            new_case=new_case,
            phone=form.phone_e164,
            language=form.language.data,
        )
    except AdminError as exc:
        session.rollback()
        field = getattr(form, exc.field or "case_number")
        field.errors = [*field.errors, str(exc)]
        return _enroll_page(form, 400)
    session.commit()
    flash(*_enroll_message(enrolled))
    return redirect(url_for("admin.case", case_id=enrolled.case.id))


def _enroll_message(enrolled: service.Enrolled) -> tuple[str, str]:
    shown = format_phone(enrolled.enrollment.phone)
    outcome = enrolled.outcome
    if outcome == service.cases.EnrollOutcome.ALREADY_ACTIVE:
        return f"{shown} is already active on this case; nothing changed.", "info"
    if outcome == service.cases.EnrollOutcome.OPTED_OUT:
        when = f" on {local(enrolled.opted_out_at, '%b %-d, %Y')}" if enrolled.opted_out_at else ""
        return (
            f"{shown} opted out of texts{when}. It is on this case but stays opted out: no "
            "opt-in text was sent, and it will get texts only if the payer texts START. "
            "Staff cannot undo an opt-out.",
            "error",
        )
    first = (
        f"{shown} was already enrolled on this case and is waiting for the payer's YES."
        if outcome == service.cases.EnrollOutcome.ALREADY_PENDING
        else f"{shown} is enrolled, pending until the payer replies YES."
    )
    if enrolled.invite is None and enrolled.enrollment.invited_at is not None:
        return f"{first} The opt-in text was sent earlier; nothing changed.", "info"
    if enrolled.invite is None:
        return (
            f"{first} No opt-in text was sent: the number opted out of texts or cannot "
            "receive them.",
            "error",
        )
    if isinstance(enrolled.invite, Held):
        return (
            f"{first} The opt-in text will be sent at {enrolled.invite.when()}, when the "
            "payer's quiet hours end.",
            "info",
        )
    if enrolled.invite.result.ok:
        return f"{first} The opt-in text was sent.", "success"
    if enrolled.invite.result.outcome_unknown:
        return f"{first} {_MAY_HAVE_GONE}", "warning"
    if enrolled.invite.retry is not None:
        return f"{first} {_refused_for_now(enrolled.invite)}", "warning"
    error = enrolled.invite.result.error_message or "provider error"
    return f"{first} The opt-in text could not be sent ({error}).", "error"


def _refused_for_now(invite) -> str:
    """What happened to an invitation Twilio refused for now, and when it goes again."""
    result = invite.result
    if result.error_code == 20429:
        why = "Twilio was busy"
    else:
        why = f"Twilio could not take it ({result.error_message or 'provider error'})"
    return f"{why}; the opt-in text will be retried at {invite.retry.when()}."


# --- Handoffs --------------------------------------------------------------------------------


@bp.get("/handoffs")
def handoffs():
    """Payers waiting for a person, oldest first, a page at a time."""
    session = get_session()
    inbox = service.handoff_inbox(session=session, page=request.args.get("page", 1, type=int))
    cases = [r.case for r in inbox.rows]
    return render_template(
        "admin/handoffs.html",
        inbox=inbox,
        rows=inbox.rows,
        zones=service.case_zones(session=session, cases=cases, default=_zone()),
        close_form=forms.ButtonForm(prefix="close", formdata=None),
    )


@bp.post("/handoffs/<id:handoff_id>/close")
def close_handoff(handoff_id: int):
    """Close a request for a person without texting (the payer was called, say)."""
    from models import Handoff

    if not forms.ButtonForm(prefix="close").validate_on_submit():
        abort(400)
    session = get_session()
    if session.get(Handoff, handoff_id) is None:
        abort(404)
    try:
        handoff = service.close_handoff(
            session=session, handoff_id=handoff_id, staff_user_id=current_user.id
        )
    except AdminError as exc:
        session.rollback()
        flash(str(exc), "error")
    else:
        session.commit()
        flash(
            f"The request from {format_phone(handoff.phone)} is closed; no text was sent.",
            "success",
        )
    back = request.args.get("next")
    return redirect(_safe_next(back) if back else url_for("admin.handoffs"))


# --- Import ----------------------------------------------------------------------------------

PREVIEW_ROWS = 50


@bp.route("/import", methods=["GET", "POST"])
@role_required(Role.ADMIN)
def import_cases():
    """Upload the cases CSV (admins only): every line is checked and previewed before writing."""
    form = forms.ImportForm()
    if request.method == "GET":
        return render_template("admin/import.html", form=form)
    if not form.validate_on_submit():
        return render_template("admin/import.html", form=form), 400
    upload = form.file.data
    try:
        text = service.decode_upload(upload.read())
    except AdminError as exc:
        form.file.errors = [*form.file.errors, str(exc)]
        return render_template("admin/import.html", form=form), 400
    plan = service.plan_import(text, config=current_app.config)
    filename = (upload.filename or "cases.csv")[-100:]
    if not plan.ok:
        return render_template(
            "admin/import.html", form=form, plan=plan, filename=filename, errors=plan.errors
        ), 400
    existing = service.existing_case_numbers(session=get_session(), plan=plan)
    token = service.stash_import(
        redis=current_app.extensions["redis"],
        text=text,
        user_id=current_user.id,
        filename=filename,
    )
    confirm = forms.ImportConfirmForm(formdata=None, token=token)
    return render_template(
        "admin/import.html",
        form=form,
        plan=plan,
        filename=filename,
        preview=plan.rows[:PREVIEW_ROWS],
        updates=len(existing & {row.case_number.upper() for row in plan.rows}),
        existing=existing,
        confirm_form=confirm,
    )


@bp.post("/import/confirm")
@role_required(Role.ADMIN)
def import_confirm():
    """Write the previewed file (admins only): cases created or updated, enrollments added."""
    confirm = forms.ImportConfirmForm()
    if not confirm.validate_on_submit():
        abort(400)
    try:
        filename, text = service.take_import(
            redis=current_app.extensions["redis"],
            token=confirm.token.data,
            user_id=current_user.id,
        )
    except AdminError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.import_cases"))
    plan = service.plan_import(text, config=current_app.config)
    if not plan.ok:  # cannot happen for a stashed plan, but never write a bad file
        flash("The file no longer passes the checks; upload it again.", "error")
        return redirect(url_for("admin.import_cases"))
    session = get_session()
    try:
        result = service.cases.apply_import(
            session=session, rows=plan.rows, consent_version=current_app.config["CONSENT_VERSION"]
        )
        invited = 0
        if confirm.invite.data:
            invited = service.cases.invite_imported(
                session=session, case_numbers=[row.case_number for row in plan.rows], now=utcnow()
            )
        session.commit()
    except Exception:
        # Nothing was written: the preview goes back, so the same confirm can be tried again.
        session.rollback()
        service.stash_import(
            redis=current_app.extensions["redis"],
            text=text,
            user_id=current_user.id,
            filename=filename,
            token=confirm.token.data,
        )
        raise
    flash(
        f"Imported {filename}: {result.created} new case(s), {result.updated} updated, "
        f"{result.enrollments_created} pending enrollment(s) added.",
        "success",
    )
    if invited:
        flash(
            f"{invited} opt-in text(s) will go out over the next minutes, each in its payer's "
            "texting hours and at the SMS rate; a number's texts start once the payer replies YES.",
            "info",
        )
    elif result.enrollments_created:
        flash(
            "No opt-in texts were sent: the pending numbers get texts only once invited "
            "(import again with the invitation box ticked, or `flask enroll --invite-pending`).",
            "info",
        )
    if result.opted_out:
        flash(
            f"{result.opted_out} number(s) had opted out of texts: they are enrolled opted out, "
            "will not be invited, and get texts only if the payer texts START.",
            "info",
        )
    return redirect(url_for("admin.cases"))


# --- Users -----------------------------------------------------------------------------------


def _users_page(form: forms.UserForm | None = None, status: int = 200):
    users = service.list_users(session=get_session())
    role_forms = {}
    for user in users:
        role_form = forms.RoleForm(prefix=f"role{user.id}", formdata=None)
        role_form.role.data = user.role
        role_forms[user.id] = role_form
    return render_template(
        "admin/users.html",
        users=users,
        form=form or forms.UserForm(formdata=None),
        role_forms=role_forms,
        unlock_form=forms.ButtonForm(prefix="unlock", formdata=None),
        now=utcnow(),
    ), status


@bp.get("/users")
@role_required(Role.ADMIN)
def users():
    """Staff accounts (admins only)."""
    return _users_page()


@bp.post("/users")
@role_required(Role.ADMIN)
def create_staff_user():
    """Add a staff account (admins only)."""
    form = forms.UserForm()
    if not form.validate_on_submit():
        return _users_page(form, 400)
    session = get_session()
    try:
        user = create_user(
            session=session,
            email=form.email.data,
            password=form.password.data,
            role=Role(form.role.data),
        )
    except UserError as exc:
        session.rollback()
        form.email.errors = [*form.email.errors, str(exc)]
        return _users_page(form, 400)
    session.commit()
    flash(f"Created {user.role} account {user.email}.", "success")
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>/role")
@role_required(Role.ADMIN)
def change_role(user_id: int):
    """Make a user admin or staff (admins only)."""
    form = forms.RoleForm(prefix=f"role{user_id}")
    if not form.validate_on_submit():
        abort(400)
    session = get_session()
    try:
        user = service.set_role(
            session=session,
            user_id=user_id,
            role=Role(form.role.data),
            acting_user_id=current_user.id,
        )
    except AdminError as exc:
        session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("admin.users"))
    session.commit()
    flash(f"{user.email} is now {user.role}.", "success")
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>/unlock")
@role_required(Role.ADMIN)
def unlock_user(user_id: int):
    """Lift a sign-in lock-out (admins only)."""
    if not forms.ButtonForm(prefix="unlock").validate_on_submit():
        abort(400)
    session = get_session()
    try:
        user = service.unlock_user(session=session, user_id=user_id)
    except AdminError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.users"))
    session.commit()
    flash(f"{user.email} can sign in again.", "success")
    return redirect(url_for("admin.users"))
