"""Ray's console chatter, kept out: a workaround for Ray having no per-message setting for it.

`NOISE` is what Ray prints that a user cannot act on: Ray Data's plan of every epoch's Dataset,
Ray Train's worker-group start-up and per-report lines, a core error line about Train's preemption
watcher, deprecations inside Ray. `quiet_ray` and `quiet_worker_logs` drop it from the driver's
console (Ray's log files keep all of it); `--verbose` skips both.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence

NOISE = re.compile(
    "|".join(
        [
            # Ray Data: each epoch streams train and val through a new Dataset execution, 3-4 lines each
            r"Starting execution of Dataset",
            r"Execution plan of Dataset",
            r"Dataset \S+ execution (finished|failed)",
            r"Data sink \S+ finished",
            r"Progress bars disabled",
            # Ray Train: worker-group start-up, and a line per report and checkpoint (with the whole metrics dict)
            r"^Requesting resources: ",
            r"^Attempting to start training worker group",
            r"^Setting up process group for",
            r"^Started training worker group of size",
            r"^- \(ip=\S+, pid=\d+\) world_rank=",
            r"^Moving model to device",
            r"^Checkpoint successfully created at",
            r"^Reporting training result \d+",
            # Train's cleaner removing the placement group of a trial that ended or that ASHA stopped: as designed
            r"Detected that the Ray Train controller actor \S+ is dead. Cleaning up placement group",
            # Ray core logs at error level that Train's PreemptionWatcher actor has its arguments in the object store
            r"Actor with class name: 'PreemptionWatcher' .* has constructor arguments in the object store",
            # for whoever upgrades Ray, not for whoever runs a study
            r"RayDeprecationWarning",
            # driver: the token-auth notice of every local cluster; Tune's final state write; Tune's restore hint
            # (the job prints its own --resume command); Tune's GPU check, which cannot see that Train's workers
            # (not the trial's driver fn) hold the GPUs
            r"Token authentication is enabled for this Ray cluster",
            r"Wrote the latest version of all result files",
            r"Experiment has been interrupted, but the most recent state was saved",
            r"Tune detects GPUs, but no trials are using GPUs",
            # Tune timing its own callbacks: slow only while MLflow is waited on, which the job reports itself
            r"which may be a performance bottleneck",
            # the GCS asked to kill an actor that had already exited (a Dataset's execution or a trial ended)
            r"Failed to kill actor (NIL_ID|\w+, return status: Invalid: KillActor RPC failed .*Socket closed)",
        ]
    )
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def quiet_ray() -> None:
    """Drop NOISE from the console handlers of Ray's loggers on the driver (after `import ray`, before ray.init)."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its console handler)

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _DropNoise) for f in handler.filters
            ):
                handler.addFilter(_DropNoise())


def quiet_worker_logs() -> None:
    """Drop NOISE from the worker output that Ray forwards to the driver's console (after ray.init).

    Ray has no per-message setting for this: worker processes (Train controllers and workers, Ray
    Data's split coordinators, Tune's trial actors) write to their log files, and the driver
    prints every line through one handler. This wraps that handler, so it relies on Ray's
    `global_worker_stdstream_dispatcher` (ray 2.60); without it, nothing is filtered.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = dict(dispatcher.handlers).get("ray_print_logs")  # absent with log_to_driver=False
    if printer is None or isinstance(printer, functools.partial) and printer.func is _print_without_noise:
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", functools.partial(_print_without_noise, printer))


def _print_without_noise(printer: Callable[[dict], None], batch: dict) -> None:
    lines = without_noise(batch.get("lines", []))
    if lines:
        printer({**batch, "lines": lines})


def without_noise(lines: Sequence[str]) -> list[str]:
    """The lines that are not NOISE; a dropped warning takes its indented source line with it."""
    kept, in_warning = [], False
    for line in _without_shutdown_tracebacks(lines):
        if in_warning and line[:1].isspace():  # warnings.warn prints "file:line: Category: message" + the source line
            continue
        noise = NOISE.search(line)
        in_warning = bool(noise) and "Warning: " in line
        if not noise:
            kept.append(line)
    return kept


# Ray Data's file-listing thread (ListFiles) raises InterruptedError when the Dataset's execution ends
# before it has queued its end marker; the thread's traceback is printed though nothing failed.
_TRACEBACK_START = re.compile(r"^(Exception in thread .*:|Traceback \(most recent call last\):)$")
_INSIDE_RAY = re.compile(r'^\s+File ".*(site-packages/ray/|/threading\.py")')


def _without_shutdown_tracebacks(lines: Sequence[str]) -> list[str]:
    """The lines, less each traceback that runs only through Ray and threading and ends in InterruptedError."""
    kept, i = [], 0
    while i < len(lines):
        if not _TRACEBACK_START.match(lines[i]):
            kept.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and (lines[end][:1].isspace() or _TRACEBACK_START.match(lines[end])):
            end += 1
        block = lines[i : end + 1]  # through the exception's own line
        frames = [line for line in block if line.lstrip().startswith("File ")]
        shutdown = end < len(lines) and lines[end].strip() == "InterruptedError"
        if not (shutdown and frames and all(_INSIDE_RAY.match(f) for f in frames)):
            kept.extend(block)
        i = end + 1
    return kept
