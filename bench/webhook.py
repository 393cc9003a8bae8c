"""Benchmark: /sms/inbound (signed, enrolled number, BAL) under gunicorn with 2 workers.

It runs next to a bare Flask endpoint returning fixed TwiML, in the same run:

    .venv/bin/python -m bench.webhook [--seconds 2] [--rounds 15] [--rate 200] [--pg POSTGRES_URL]

Prints, for each endpoint: the most requests per second it answers (closed loop, 8 clients), as
the median of `rounds` rounds taken in turn with the other endpoint so both see the same machine,
and their ratio, the median of each PayText round over the bare round right after it,
and the p50/p99 latency when offered a steady 200 requests per second (open loop). Both run as
in production (no debug mode). The load generator shares the machine's cores with the servers;
the CPU time per request of the two gunicorn workers and of the load generator, over the
closed-loop rounds, shows where the cores went (Linux: read from /proc), and the ratio of the
workers' CPU alone.
Targets: PayText at least half the bare endpoint's throughput, and p99 under 25 ms at 200/s.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import sqlalchemy as sa

from bot import sms
from scripts import embedded_redis

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-auth-token"
PUBLIC = "http://paytext.bench"
WORKERS = 2
PHONES = 500
"""Payers texting at once; one phone's texts are handled one at a time, by design."""


def seed(database_url: str) -> None:
    """PHONES payers, each with a case and an active enrollment, as the webhook sees them."""
    from sqlmodel import Session

    import db
    from models import Case, Enrollment, EnrollmentStatus

    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    with Session(engine) as session:
        for n in range(PHONES):
            case = Case(
                case_number=f"BENCH-{n:05d}",
                payer_name=f"Bench Payer {n}",
                amount_due_cents=25_000,
                balance_cents=100_000,
                timezone="America/New_York",
            )
            session.add(case)
            session.flush()
            session.add(
                Enrollment(
                    case_id=case.id,
                    phone=phone(n),
                    status=EnrollmentStatus.ACTIVE,
                    consent_version="bench",
                )
            )
        session.commit()
    engine.dispose()


def phone(n: int) -> str:
    return f"+1617555{n:04d}"


def start_gunicorn(app_spec: str, port: int, env: dict) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            "--workers",
            str(WORKERS),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            app_spec,
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit(f"gunicorn {app_spec} did not start")


_senders = itertools.cycle(range(PHONES))


def request_body() -> tuple[bytes, dict]:
    params = {
        "MessageSid": f"SM{uuid.uuid4().hex}",
        "AccountSid": "AC" + "0" * 32,
        "From": phone(next(_senders)),
        "To": "+18005550100",
        "Body": "BAL",
        "NumMedia": "0",
    }
    signature = sms.sign(auth_token=TOKEN, url=PUBLIC + "/sms/inbound", params=params)
    headers = {"Content-Type": "application/x-www-form-urlencoded", sms.SIGNATURE_HEADER: signature}
    return urlencode(params).encode(), headers


def one(connection: http.client.HTTPConnection) -> float:
    body, headers = request_body()
    started = time.perf_counter()
    connection.request("POST", "/sms/inbound", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return elapsed


def closed_loop(port: int, seconds: float, clients: int = 8) -> tuple[int, float]:
    """Requests answered, and seconds taken, with `clients` connections sending back to back."""
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def worker(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            one(connection)
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.monotonic() - started


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes used so far (0 where /proc cannot tell)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def workers_of(process: subprocess.Popen, count: int = WORKERS) -> list[int]:
    """gunicorn's worker processes (the children of its arbiter), once all `count` are up."""
    pids: list[int] = []
    deadline = time.monotonic() + 10
    while len(pids) < count and time.monotonic() < deadline:
        try:
            with open(f"/proc/{process.pid}/task/{process.pid}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
        except OSError:
            return []
        time.sleep(0.05)
    return pids


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_loop(port: int, seconds: float, rate: float) -> list[float]:
    """Latencies when requests are offered at a steady `rate`, whatever the answers take."""
    latencies: list[float] = []
    lock = threading.Lock()
    interval = 1 / rate
    total = int(seconds * rate)
    next_index = itertools.count()
    started = time.perf_counter()

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            index = next(next_index)
            if index >= total:
                return
            due = started + index * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            # Latency counts from when the request was due, so a slow server cannot hide queueing.
            one(connection)
            with lock:
                latencies.append(time.perf_counter() - due)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


@dataclass
class Load:
    """What the closed-loop rounds of one endpoint measured."""

    rounds: list[float] = field(default_factory=list)  # requests per second, one per round
    requests: int = 0
    server_cpu: float = 0.0  # seconds, both workers
    client_cpu: float = 0.0  # seconds, this process (the load generator)

    def measure(self, port: int, workers: list[int], seconds: float) -> None:
        server, client = cpu_seconds(workers), own_cpu_seconds()
        count, took = closed_loop(port, seconds)
        self.server_cpu += cpu_seconds(workers) - server
        self.client_cpu += own_cpu_seconds() - client
        self.requests += count
        self.rounds.append(count / took)


def cpu_per_request(load: Load, side: str) -> float:
    """Seconds of CPU per request of the closed-loop rounds: `side` is server or client."""
    return getattr(load, f"{side}_cpu") / max(load.requests, 1)


def report(label: str, load: Load, latencies: list[float], rate: float) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"{label:<26} max {statistics.median(load.rounds):6.0f} req/s "
        f"(rounds {' '.join(f'{r:.0f}' for r in load.rounds)})   at {rate:.0f} req/s: "
        f"p50 {p50:4.1f} ms  p99 {p99:5.1f} ms  ({len(latencies)} requests)\n"
        f"{'':<26} CPU per request: workers {cpu_per_request(load, 'server') * 1e6:4.0f} us, "
        f"load generator {cpu_per_request(load, 'client') * 1e6:4.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2, help="length of each round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--pg", help="PostgreSQL server URL: a scratch database is made there")
    options = parser.parse_args()
    redis = embedded_redis.start()
    tmp = tempfile.mkdtemp(prefix="paytext-bench-")
    database_url = f"sqlite:///{tmp}/bench.sqlite3"
    admin = name = None
    if options.pg:
        admin = sa.create_engine(
            options.pg.replace("postgresql://", "postgresql+psycopg://"),
            isolation_level="AUTOCOMMIT",
        )
        name = f"paytext_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        database_url = sa.make_url(options.pg).set(database=name).render_as_string(False)
    seed(database_url)
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=f"{redis.url}/0",
        SECRET_KEY="bench",
        TWILIO_ACCOUNT_SID="AC" + "0" * 32,
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_FROM_NUMBER="+18005550100",
        TWILIO_API_BASE_URL="http://127.0.0.1:9",
        PUBLIC_BASE_URL=PUBLIC,
        LOG_LEVEL="WARNING",
    )
    database = "postgresql" if options.pg else "sqlite"
    endpoints = {
        f"paytext BAL ({database})": "app:create_app()",
        "bare Flask TwiML": "bench.bare_app:create_app()",
    }
    processes = []
    try:
        ports, workers = {}, {}
        for label, spec in endpoints.items():
            ports[label] = embedded_redis.free_port()
            processes.append(start_gunicorn(spec, ports[label], env))
            workers[label] = workers_of(processes[-1])
            for _ in range(20):  # warm up both workers
                one(http.client.HTTPConnection("127.0.0.1", ports[label]))
        loads = {label: Load() for label in endpoints}
        for _ in range(options.rounds):
            for label, port in ports.items():
                loads[label].measure(port, workers[label], options.seconds)
        for label, port in ports.items():
            latencies = open_loop(port, options.latency_seconds, options.rate)
            report(label, loads[label], latencies, options.rate)
        paytext_rounds, bare_rounds = (load.rounds for load in loads.values())
        paytext, bare = statistics.median(paytext_rounds), statistics.median(bare_rounds)
        # Each PayText round ran right before its bare round: their ratio is the least touched
        # by the machine's speed drifting over the run.
        pairs = sorted(p / b for p, b in zip(paytext_rounds, bare_rounds, strict=True))
        print(
            f"paytext / bare throughput: {statistics.median(pairs):.0%} median of the "
            f"{len(pairs)} paired rounds ({pairs[0]:.0%} to {pairs[-1]:.0%}); "
            f"{paytext / bare:.0%} from the medians (target at least 50%)"
        )
        # The load generator's CPU per request is about the same for both endpoints, and it runs
        # on the same two cores: it narrows the throughput gap. The workers' own CPU does not.
        paytext_load, bare_load = loads.values()
        print(
            "workers' CPU per request, bare / paytext: "
            f"{cpu_per_request(bare_load, 'server') / cpu_per_request(paytext_load, 'server'):.0%} "
            "(the servers' own work, without the load generator's share of the cores)"
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        redis.stop()
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
