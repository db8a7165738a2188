"""Retrying SQLite writes under contention: several runs logging to one ``sqlite:///`` MLflow
store at once (``scripts/benchmark.py --jobs 2``, a sweep on one machine).

MLflow waits up to its busy timeout for a lock, but a writer whose transaction already read is refused
at once (SQLite does not wait where waiting could deadlock), a schema check can collide with
another process's, and a lock held past the timeout is an error. The transaction is rolled back
either way, so the call is retried: at most LOCK_RETRIES times, exponential backoff with jitter.
"""

from __future__ import annotations

import random
import time

LOCK_MESSAGES = ("database is locked", "database table is locked", "database schema has changed", "sqlite_busy")
LOCK_RETRIES = 8
LOCK_BACKOFF = (0.05, 2.0)  # first delay, largest delay (seconds), each jittered by x0.5 .. x1.5


def is_lock_error(exc: BaseException) -> bool:
    """True for SQLite lock contention (``database is locked``) anywhere in the exception chain
    (MLflow wraps SQLAlchemy's OperationalError, which wraps sqlite3's)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(m in str(exc).lower() for m in LOCK_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_locked(fn, *args, retries: int = LOCK_RETRIES, backoff: tuple[float, float] = LOCK_BACKOFF,
                 on_retry=None, sleep=time.sleep, **kwargs):
    """``fn(*args, **kwargs)``, called again after a SQLite lock error (:func:`is_lock_error`) up
    to ``retries`` times, waiting ``min(last, first * 2**i)`` x a random factor in [0.5, 1.5)
    before retry ``i`` (jitter: writers that collided once do not collide again in step).
    ``on_retry(i, exc)`` is called before each wait. Any other error, or the last lock error,
    is raised as it is."""
    first, last = backoff
    for i in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException, SQLAlchemy OperationalError, sqlite3
            if i == retries or not is_lock_error(exc):
                raise
            if on_retry is not None:
                on_retry(i, exc)
            sleep(min(last, first * 2 ** i) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover
