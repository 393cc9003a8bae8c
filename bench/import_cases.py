"""Benchmark: `flask cases import` of a 100,000-row CSV, on SQLite and (if given) PostgreSQL.

    .venv/bin/python -m bench.import_cases [--rows 100000] [--pg POSTGRES_URL]

Prints the seconds each stage takes (generate, import, re-import of the same file).
Target: the import finishes in under 60 seconds on a 2-core machine.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
AREA_CODES = ["617", "508", "413", "213", "310", "415", "305", "212", "718", "312", "713", "602"]
ZONES = ["America/New_York", "America/Los_Angeles", "America/Chicago", "America/Phoenix", ""]


def write_csv(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        out.write(
            "case_number,payer_name,phone,language,amount_due,balance,next_due_date,timezone\n"
        )
        for n in range(rows):
            phone = f"({rng.choice(AREA_CODES)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
            due = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            amount = rng.randint(5_000, 90_000)
            out.write(
                f"CS-{n:08d},Payer {n},{phone},{rng.choice(['en', 'es'])},"
                f"{amount // 100}.{amount % 100:02d},{amount * 3 // 100}.00,{due},"
                f"{rng.choice(ZONES)}\n"
            )


def flask(args: list[str], database_url: str) -> float:
    env = {
        "DATABASE_URL": database_url,
        "PATH": f"{ROOT / '.venv/bin'}:/usr/bin:/bin",
        "LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "flask", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"flask {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def run(label: str, database_url: str, csv_path: Path, rows: int) -> None:
    flask(["db", "upgrade"], database_url)
    first = flask(["cases", "import", str(csv_path)], database_url)
    again = flask(["cases", "import", str(csv_path)], database_url)
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        cases = connection.execute(sa.text("SELECT count(*) FROM cases")).scalar_one()
        enrollments = connection.execute(sa.text("SELECT count(*) FROM enrollments")).scalar_one()
    engine.dispose()
    print(
        f"{label:<10} import {rows:,} rows: {first:6.1f} s ({rows / first:,.0f} rows/s)   "
        f"re-import: {again:6.1f} s   cases={cases:,} enrollments={enrollments:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", help="PostgreSQL server URL; a scratch database is created there")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "cases.csv"
        started = time.perf_counter()
        write_csv(csv_path, options.rows)
        print(f"generated {options.rows:,} rows in {time.perf_counter() - started:.1f} s")
        run("sqlite", f"sqlite:///{Path(tmp) / 'bench.sqlite3'}", csv_path, options.rows)
        if options.pg:
            admin = sa.create_engine(
                options.pg.replace("postgresql://", "postgresql+psycopg://"),
                isolation_level="AUTOCOMMIT",
            )
            name = f"paytext_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                run(
                    "postgresql",
                    str(
                        sa.make_url(options.pg)
                        .set(database=name)
                        .render_as_string(hide_password=False)
                    ),
                    csv_path,
                    options.rows,
                )
            finally:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
