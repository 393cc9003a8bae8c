"""Every background job runs inside an app context, with the same settings as the web app."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import Flask, has_app_context
from rq import SimpleWorker

P = ParamSpec("P")
R = TypeVar("R")

_app: Flask | None = None
_app_pid: int | None = None


def worker_app() -> Flask:
    """The worker process's app, built once per process (and again after a fork)."""
    global _app, _app_pid
    if _app is None or _app_pid != os.getpid():
        from app import create_app

        _app, _app_pid = create_app(), os.getpid()
    return _app


def job(func: Callable[P, R]) -> Callable[P, R]:
    """Run `func` in an app context: the caller's if there is one (tests), else the worker's."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if has_app_context():
            return func(*args, **kwargs)
        with worker_app().app_context():
            return func(*args, **kwargs)

    return wrapper


class AppWorker(SimpleWorker):
    """An RQ worker that builds the app once and runs jobs in-process.

    Forking a work horse per job would rebuild the app and its connection pools for every job;
    jobs here are short I/O calls, and each job function is idempotent, so a crash mid-job is
    recovered by RQ's retry and the job's own checks rather than by process isolation.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        worker_app()
