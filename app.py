"""The app factory: settings, database, Redis and queues, SMS and payment gateways, blueprints."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from typing import Any

from flask import Flask, jsonify, request
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from werkzeug.middleware.proxy_fix import ProxyFix

import db
import logredact
import settings
from settings import SettingsError

log = logging.getLogger("paytext")

QUEUES = ("payments", "sms", "default")
"""RQ queues, most urgent first; a worker listens to all of them in this order."""


class PayTextFlask(Flask):
    """Flask, logging a request that failed without the token of a card or approval link."""

    def log_exception(self, exc_info) -> None:
        # Flask's own line names request.path: for /pay/card/<token> that is the credential
        # itself, in the error log, where the access log (accesslog.py) keeps it out.
        from accesslog import redact

        self.logger.error(
            "Exception on %s [%s]", redact(request.path), request.method, exc_info=exc_info
        )


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the PayText app: defaults, then the environment, then `test_config`."""
    app = PayTextFlask(__name__, instance_relative_config=True)
    app.config.from_mapping(settings.defaults())
    given = settings.from_environ()
    app.config.from_mapping(given)
    if test_config:
        app.config.from_mapping(test_config)
        given.update(test_config)
    # Every setting parsed now, as the code will parse it: a bad one stops the process here.
    app.config.from_mapping(settings.check(app.config))
    os.makedirs(app.instance_path, exist_ok=True)
    if not given.get("REDIS_URL"):
        _use_embedded_redis(app)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = settings.sqlite_url(app.instance_path)
    _configure_logging(app)
    _choose_backends(app)
    _check_production_settings(app)

    _trust_proxies(app)

    db.init_app(app)
    _init_redis(app)
    _init_gateways(app)
    _register_blueprints(app)
    _init_admin(app)
    _register_commands(app)
    return app


def _configure_logging(app: Flask) -> None:
    level = logging.getLevelNamesMapping()[app.config["LOG_LEVEL"]]
    # PostgreSQL's errors quote the row values that failed a constraint: phones, names.
    logredact.install()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(level)
    # The Twilio SDK logs every request and response header at INFO.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    # At DEBUG the Stripe SDK logs request and response bodies, client secrets included.
    logging.getLogger("stripe").setLevel(max(level, logging.INFO))


def _choose_backends(app: Flask) -> None:
    """Twilio and Stripe when their credentials are set; console and sandbox otherwise."""
    config = app.config
    twilio = config["TWILIO_ACCOUNT_SID"] and config["TWILIO_AUTH_TOKEN"]
    if bool(config["TWILIO_ACCOUNT_SID"]) != bool(config["TWILIO_AUTH_TOKEN"]):
        # Half of Twilio's credentials would fall back to the console backend, which takes
        # unsigned texts: anyone could text as any payer. Refuse instead.
        raise SettingsError("set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or neither")
    if not twilio and str(config["STRIPE_SECRET_KEY"] or "").startswith(("sk_live_", "rk_live_")):
        raise SettingsError(
            "a live Stripe key needs Twilio: without it texts are unsigned (console backend)"
        )
    config["SMS_BACKEND"] = "twilio" if twilio else "console"
    config["PAYMENT_BACKEND"] = "stripe" if config["STRIPE_SECRET_KEY"] else "sandbox"
    log.info(
        "SMS backend: %s; payment backend: %s", config["SMS_BACKEND"], config["PAYMENT_BACKEND"]
    )
    if config["SMS_BACKEND"] == "console":
        log.warning("Twilio signature checks are off: the console SMS backend has no Twilio")


def _check_production_settings(app: Flask) -> None:
    """Refuse to start half-configured in production; development gets safe defaults."""
    config = app.config
    real_backend = config["SMS_BACKEND"] == "twilio" or config["PAYMENT_BACKEND"] == "stripe"
    production = real_backend and not (app.debug or app.testing)
    if config["SMS_BACKEND"] == "twilio" and not (
        config["TWILIO_MESSAGING_SERVICE_SID"] or config["TWILIO_FROM_NUMBER"]
    ):
        raise SettingsError("TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER must be set")
    if not config["SECRET_KEY"]:
        if production:
            raise SettingsError("SECRET_KEY must be set in production (a real backend is chosen)")
        config["SECRET_KEY"] = _development_secret(app.instance_path)
        log.warning("SECRET_KEY is not set: using this install's development key (instance/)")
    if config["PAYMENT_BACKEND"] == "stripe" and not config["STRIPE_WEBHOOK_SECRET"]:
        if production:
            raise SettingsError("STRIPE_WEBHOOK_SECRET must be set with the Stripe backend")
        log.warning("STRIPE_WEBHOOK_SECRET is not set: Stripe webhooks will all be refused")
    if config["PAYMENT_BACKEND"] == "sandbox" and not config["STRIPE_WEBHOOK_SECRET"]:
        # The sandbox signs its own events; derive a key so they verify like Stripe's.
        digest = hashlib.sha256(f"sandbox-webhook:{config['SECRET_KEY']}".encode()).hexdigest()
        config["SANDBOX_WEBHOOK_SECRET"] = f"whsec_{digest[:32]}"
    else:
        config["SANDBOX_WEBHOOK_SECRET"] = config["STRIPE_WEBHOOK_SECRET"]


def _trust_proxies(app: Flask) -> None:
    """Behind TRUSTED_PROXIES proxies, request.remote_addr is the client's address, not theirs.

    Counted against the router's address, twenty bad sign-ins from anyone locked every staff
    member out. Only the address changes: webhook signatures are checked against
    PUBLIC_BASE_URL, whatever host or scheme the proxy forwards.
    """
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=0, x_host=0, x_port=0)


def _development_secret(instance_path: str) -> str:
    """A random key made once per install and shared by its processes (web, worker, scheduler).

    A key written in the code would let anyone who can reach a development server forge a
    staff session or a card link.
    """
    path = os.path.join(instance_path, "dev-secret-key")
    if not os.path.exists(path):
        draft = f"{path}.{os.getpid()}"
        with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(secrets.token_hex(32))
        try:
            os.link(draft, path)  # atomic: the first process to get here wins, the others read it
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    with open(path) as key:
        return key.read().strip()


EMBEDDED_REDIS_FILE = "redis-url"
"""In the instance folder while `make run` runs its embedded Redis: that Redis's URL."""


def _use_embedded_redis(app: Flask) -> None:
    """With REDIS_URL unset, the Redis `make run` started for this install, while it runs.

    `flask` commands run beside `make run` (enroll --invite-pending, say) then queue their jobs
    where its worker takes them, not in whatever Redis answers on the default port.
    """
    path = os.path.join(app.instance_path, EMBEDDED_REDIS_FILE)
    try:
        with open(path) as running:
            url = running.read().strip()
    except FileNotFoundError:
        return
    if not url:
        return
    # A make run that crashed leaves the file behind: its port refuses, or (taken since by
    # something else) never answers. Say so now, not with a traceback or a hang at the first job.
    try:
        Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except RedisError as exc:
        raise SettingsError(
            f"REDIS_URL is not set and {path} names {url}, which does not answer ({exc}): "
            f"make run is not running. Start it, or delete {path}, or set REDIS_URL."
        ) from exc
    app.config["REDIS_URL"] = url
    log.info("REDIS_URL is not set: using make run's embedded Redis (%s)", url)


def _init_redis(app: Flask) -> None:
    connection = Redis.from_url(app.config["REDIS_URL"])
    app.extensions["redis"] = connection
    is_async = bool(app.config["RQ_ASYNC"])
    app.extensions["queues"] = {
        name: Queue(name, connection=connection, is_async=is_async) for name in QUEUES
    }


def _init_gateways(app: Flask) -> None:
    """Build the SMS and payment gateways once; tests choose them through settings."""
    config = app.config
    if config["SMS_BACKEND"] == "twilio":
        from bot.sms import TwilioGateway

        sms = TwilioGateway(
            config["TWILIO_ACCOUNT_SID"],
            config["TWILIO_AUTH_TOKEN"],
            messaging_service_sid=config["TWILIO_MESSAGING_SERVICE_SID"],
            from_number=config["TWILIO_FROM_NUMBER"],
            base_url=config["TWILIO_API_BASE_URL"],
        )
    else:
        from bot.sms import ConsoleGateway

        sms = ConsoleGateway(redis=app.extensions["redis"])
    app.extensions["sms"] = sms

    if config["PAYMENT_BACKEND"] == "stripe":
        from billing.stripe_gateway import StripeGateway

        payments = StripeGateway(
            config["STRIPE_SECRET_KEY"],
            webhook_secret=config["STRIPE_WEBHOOK_SECRET"],
            base_url=config["STRIPE_API_BASE_URL"],
        )
    else:
        from billing.sandbox import SandboxGateway

        payments = SandboxGateway(
            app.extensions["redis"], webhook_secret=config["SANDBOX_WEBHOOK_SECRET"]
        )
    app.extensions["payments"] = payments


def _register_blueprints(app: Flask) -> None:
    from admin.views import bp as admin_bp
    from billing.views import bp as billing_bp
    from bot.views import bp as bot_bp
    from jobs.views import bp as jobs_bp

    app.register_blueprint(bot_bp)
    app.register_blueprint(billing_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")

    @app.get("/healthz")
    def healthz():
        """Report whether the database and Redis answer."""
        checks = {}
        try:
            db.ping(app)
            checks["database"] = "ok"
        except Exception as exc:  # a health check reports failures instead of raising them
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            app.extensions["redis"].ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        healthy = all(value == "ok" for value in checks.values())
        checks["sms_backend"] = app.config["SMS_BACKEND"]
        checks["payment_backend"] = app.config["PAYMENT_BACKEND"]
        return jsonify(status="ok" if healthy else "degraded", **checks), 200 if healthy else 503


def _init_admin(app: Flask) -> None:
    """Sign-in, CSRF on every form, cookie flags and the upload limit for the staff pages."""
    from admin.auth import init_app as init_auth

    init_auth(app)


def _register_commands(app: Flask) -> None:
    from billing.cli import register as register_billing_commands
    from cases.cli import register as register_case_commands
    from jobs.cli import reminders_cli

    register_case_commands(app)
    app.cli.add_command(reminders_cli)
    register_billing_commands(app)
