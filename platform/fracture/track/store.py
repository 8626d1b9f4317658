"""The MLflow store: its URI, creating a sqlite store once under a lock, and every call bounded in time.

Stores shared between jobs: a sqlite store is created (its schema migrated) once, by the first
process to reach it, under an exclusive lock on `<db>.lock` (prepare_store; fcntl, so Linux and
macOS), because MLflow's lazy creation in two processes at once leaves the store half-migrated for
good. After that, concurrent writers only meet sqlite's own 'database is locked', which `retry`
waits out. Every wait on MLflow is bounded by mlflow_timeout_s() (FRACTURE_MLFLOW_TIMEOUT_S, default
60 s) instead of MLflow's own HTTP retries (7 with backoff factor 2: minutes per call), after which a
TrackingError says so; a study then stops (its checkpoints stay on disk for --resume) rather than
training on with metrics nobody records.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fracture.core.config import Config
from fracture.core.errors import UserError
from fracture.core.redact import redact

log = logging.getLogger(__name__)


class TrackingError(UserError, RuntimeError):
    """MLflow unusable (unreachable server, bad URI, damaged store, no answer within the bound).

    Raised before training where it can be seen then (check_reachable); its message never holds
    credentials (redact).
    """


# How long one MLflow call may keep failing transiently (connection refused, 5xx, timeouts, sqlite
# 'database is locked') before TrackingError: a server that died must end a study in about a
# minute, not leave it retrying silently.
TIMEOUT_ENV = "FRACTURE_MLFLOW_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
# MLflow's own retries inside one HTTP call, kept few and quick (its default: 7 with backoff factor
# 2, ~4 minutes per call), so retry's clock bounds the wait; they still cover the calls retry
# does not wrap (Model.log's uploads, artifact downloads).
HTTP_RETRIES = 2
_TRANSIENT = (
    "locked",
    "timeout",
    "timed out",
    "temporarily",
    "connection",
    "max retries exceeded",
    "too many",
    "502",
    "503",
    "504",
)


def mlflow_timeout_s() -> float:
    """The bound on waiting for MLflow, in seconds: $FRACTURE_MLFLOW_TIMEOUT_S, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = math.nan
    if not value > 0:
        raise TrackingError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def tracking_uri(cfg: Config) -> str:
    """cfg.tracking.uri, else $MLFLOW_TRACKING_URI, else an embedded sqlite store in the study dir."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{cfg.run_dir / 'mlflow.db'}"


@contextlib.contextmanager
def http_bounds(bound_s: float):
    """MLflow's per-call HTTP retries and request timeout, sized so that one call fits in about `bound_s`.

    Set only for the call, and only where the user has not set them: theirs win.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int in MLflow: sleeps 0 s, then 2 s (+ <1 s jitter)
        # A server that accepts and never answers costs (retries + 1) timeouts per call: 20 s each at
        # the default bound. Never under 10 s: a busy server's slow answer is still an answer.
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(10, int(bound_s / (HTTP_RETRIES + 1)))),
    }
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def first_line(exc: BaseException, limit: int = 400) -> str:
    text = redact(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def retry(fn: Callable, *args, within_s: float | None = None, **kwargs):
    """Call an MLflow function, waiting out transient failures for at most `within_s` in all.

    sqlite 'database is locked' (several jobs writing one store) and HTTP hiccups pass; a store
    that keeps failing for the whole bound (default mlflow_timeout_s()) raises TrackingError naming
    it, credentials masked. Other errors are raised as they are.
    """
    bound = mlflow_timeout_s() if within_s is None else within_s
    start = time.monotonic()
    for attempt in itertools.count():
        try:
            with http_bounds(bound):
                return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:  # MlflowException wraps both kinds; only the message tells them apart
            if not any(s in str(exc).lower() for s in _TRANSIENT):
                raise
            waited, pause = time.monotonic() - start, min(0.5 * 2**attempt, 5.0)
            if waited + pause > bound:
                uri = getattr(getattr(fn, "__self__", None), "tracking_uri", None) or "the tracking URI"
                raise TrackingError(
                    f"MLflow at {redact(uri)} did not answer for {waited:.0f} s "
                    f"(the bound is {bound:g} s, {TIMEOUT_ENV}): {first_line(exc)}"
                ) from None
            time.sleep(pause)


@contextlib.contextmanager
def fluent(uri: str):
    """Point MLflow's fluent API (needed by mlflow.pytorch.log_model) at `uri`, then put it back.

    "Back" is MLflow's state before, not merely the same URI: its globals (unset unless someone
    called set_*_uri) and the environment variables that mlflow.set_tracking_uri exports. Setting
    the globals to the value the environment gave would pin this study's server for the rest of
    the process, even after the environment changes.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    prepare_store(uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with http_bounds(mlflow_timeout_s()):
            yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(uri: str):
    from mlflow.tracking import MlflowClient

    prepare_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_PREPARED: set[str] = set()  # sqlite stores this process has created or checked


_PREPARED: set[str] = set()  # sqlite stores this process has created or checked
# Jobs queue for the store lock one after another, seconds each; the lock goes with a process that
# dies, so only a live holder that hangs makes a job wait this long.
STORE_LOCK_WAIT_S = 300.0


def prepare_store(uri: str) -> None:
    """Create (or check) a sqlite store once, under an exclusive lock, before this process uses it.

    MLflow creates a sqlite store on a process's first use by running its schema migrations; two
    processes doing that at once leave it half-migrated, and every later job on it fails. So the
    first job to get the lock (`<db>.lock`, fcntl.flock: Linux and macOS, also on NFS) creates
    the store while the others wait, and they then find it complete. Once per process and URI;
    other URIs need nothing (a server migrates its own store).

    Raises:
        TrackingError when the lock is held past STORE_LOCK_WAIT_S, or the store cannot be opened
        (damaged, or from an older MLflow).
    """
    if not uri.startswith("sqlite:///") or uri in _PREPARED:
        return
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (seconds to import: not while others wait)
    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(db.with_name(db.name + ".lock"), STORE_LOCK_WAIT_S):
        try:
            # The cheapest call that makes MLflow open the store, and so create and migrate it.
            retry(MlflowClient(tracking_uri=uri).search_experiments, max_results=1)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"MLflow store {redact(uri)} cannot be opened ({first_line(exc)}); a store that jobs "
                "created at the same time before it was locked stays half-migrated: move it aside "
                "(or point tracking.uri at another file) and run again"
            ) from None
    _PREPARED.add(uri)


@contextlib.contextmanager
def _exclusive(path: Path, bound_s: float):
    with open(path, "a") as handle:
        deadline = time.monotonic() + bound_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"{path} stayed locked for {bound_s:g} s: another job is creating or checking "
                        "this MLflow store, and hangs doing it"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any work, when MLflow cannot be used: a server that does not answer, an
    existing sqlite store that cannot be opened (see prepare_store), a malformed URI.

    Messages carry the URI with its credentials masked.
    """
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        # urllib takes `user:password@` for part of the host name: send it as a header instead.
        health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health")
        request = urllib.request.Request(urllib.parse.urlunsplit(health._replace(query="", fragment="")))
        if parts.username is not None:
            login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            urllib.request.urlopen(request, timeout=timeout_s).read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is unreachable ({redact(getattr(exc, 'reason', exc))}); "
                "start one with `make mlflow` or set tracking.uri / MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if db.exists():
            prepare_store(uri)  # one that cannot be opened fails here, before any work
        else:
            # Created on first use (client), under its lock: a job refused after this check
            # (a wrong --resume) must leave no store behind.
            db.parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri and not uri.startswith("databricks"):
        raise TrackingError(
            f"tracking URI {redact(uri)!r}: MLflow 3 needs sqlite:///<absolute path> or http://host:port"
        )
