"""Where a study lives: Optuna's own storages, chosen by URL, checked before anything is written.

* none given: an embedded SQLite file, ``<output_dir>/optuna.db`` (one machine, a few workers);
* ``postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB`` (or ``mysql+pymysql://…``): many machines;
* ``journal:PATH``: Optuna's journal file on a shared file system (no database server).

SQL storages run a heartbeat: a worker that dies (SIGKILL, a lost machine) stops beating, and the next
worker that starts a trial marks its trial failed and enqueues a retry with the same parameters
(``RetryFailedTrialCallback``); the same parameters give the same run folder, so the retry resumes the
run from its last checkpoint. Optuna's journal storage has no heartbeat: a dead worker's trial stays
``RUNNING`` there (``optuna.storages.fail_stale_trials`` does not apply); use a SQL storage when workers
may die.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlbench.errors import ConfigError

DEFAULT_DB = "optuna.db"
SQL_SCHEMES = ("sqlite", "postgresql", "mysql")


class StorageError(ConfigError):
    """The storage cannot be used (bad URL, missing driver, unreachable server)."""


@dataclass(frozen=True)
class StorageSpec:
    url: str  # as Optuna takes it
    kind: str  # sqlite | sql | journal
    shown: str  # with any password hidden
    path: Path | None = None  # the file for sqlite / journal


def _redacted(url: Any) -> str:
    try:
        return url.render_as_string(hide_password=True)
    except AttributeError:
        return str(url)


def parse_storage(url: str | None, output_dir: str | Path) -> StorageSpec:
    """Check the URL's form, its driver and (for files) its folder; nothing is created or contacted."""
    if url is None or url == "":
        path = Path(output_dir) / DEFAULT_DB
        return StorageSpec(f"sqlite:///{path}", "sqlite", f"sqlite:///{path}", path)
    if url.startswith("journal:"):
        raw = url[len("journal:") :]
        raw = raw[2:] if raw.startswith("//") else raw
        if not raw:
            raise StorageError(
                f"storage {url!r}: a journal storage needs a file, e.g. journal:/shared/study.log"
            )
        path = Path(raw)
        if not path.parent.is_dir():
            raise StorageError(f"storage {url!r}: folder {str(path.parent)!r} does not exist")
        return StorageSpec(url, "journal", url, path)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StorageError(
            f"storage {url!r} is not a URL ({exc}); use sqlite:///FILE, "
            "postgresql+psycopg://USER@HOST/DB or journal:FILE"
        ) from None
    scheme = parsed.get_backend_name()
    shown = _redacted(parsed)
    if scheme not in SQL_SCHEMES:
        raise StorageError(
            f"storage {shown!r}: unsupported scheme {parsed.drivername!r} "
            "(use sqlite:///FILE, postgresql+psycopg://USER@HOST/DB or journal:FILE)"
        )
    try:
        parsed.get_dialect()  # imports the driver (psycopg, …)
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"storage {shown!r}: its database driver is not installed ({exc.name}); "
            "pip install 'mtlbench[postgres]' for PostgreSQL"
        ) from None
    except Exception as exc:  # sqlalchemy's NoSuchModuleError and friends
        raise StorageError(f"storage {shown!r}: {exc}") from None
    if scheme == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise StorageError(
                f"storage {shown!r}: a SQLite storage needs a file, e.g. sqlite:///runs/optuna.db"
            )
        path = Path(parsed.database)
        if not path.parent.is_dir():
            raise StorageError(f"storage {shown!r}: folder {str(path.parent)!r} does not exist")
        return StorageSpec(url, "sqlite", shown, path)
    if not parsed.database:
        raise StorageError(f"storage {shown!r}: no database name (…/DBNAME at the end)")
    return StorageSpec(url, "sql", shown)


def open_storage(
    spec: StorageSpec, heartbeat_s: int = 60, grace_s: int | None = None, max_retry: int = 3
) -> Any:
    """The Optuna storage; a database that cannot be reached raises :class:`StorageError`."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(spec.path)))
        except OSError as exc:
            raise StorageError(f"storage {spec.shown!r}: {exc.strerror or exc}") from None
    from sqlalchemy.exc import SQLAlchemyError

    engine_kwargs: dict[str, Any] = {}
    if spec.kind == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
    elif spec.url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    import contextlib

    from mtlbench import atomic

    # workers starting together on a new database race to create its tables: on one machine (SQLite)
    # a file lock orders them; across machines the loser of the race retries
    guard = atomic.locked(f"{spec.path}.lock") if spec.path is not None else contextlib.nullcontext()
    races = ("already exists", "database is locked", "duplicate", "unique")
    for attempt in range(5):
        try:
            with guard if attempt == 0 else contextlib.nullcontext(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry, inherit_intermediate_values=True
                )
                return RDBStorage(
                    spec.url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s if grace_s is not None else 2 * heartbeat_s,
                    heartbeat_stale_trial_callback=retry,
                )
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            if attempt < 4 and any(s in str(exc).lower() for s in races):
                time.sleep(0.5 + attempt)
                continue
            raise StorageError(
                f"cannot open storage {spec.shown!r}: {reason[0] if reason else type(exc).__name__}"
            ) from None
    raise AssertionError("unreachable")
