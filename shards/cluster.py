"""Ray, as every stage meets it: joining or starting a cluster, its resources, task failures.

Written once here so the preprocess run, the trainer and prediction agree on what "embedded"
means, how many CPUs and GPUs there are, and how a task's failure reads in one line. Ray is
imported only when a function needs it.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shards.errors import ConfigError, ShardsError


def check_workers(workers: int | None, *, least: int = 1) -> None:
    """Refuse `--workers` below `least` (None: the default, which the caller derives)."""
    if workers is not None and workers < least:
        raise ConfigError(f"--workers must be at least {least}, got {workers}")


# Ray's own config names (ray_config_def.h), given only to the embedded cluster:
# - The raylet connects to its own object store as soon as it has started it, and on a busy
#   machine the store is often not listening yet: each failed attempt waits
#   raylet_client_connect_timeout_milliseconds (1 s by default) before the next. On the bench
#   machine 4 in 13 embedded starts took 3.2 s instead of 2.2 for it; polled every 100 ms (with
#   attempts raised to keep Ray's 10 s limit) none of 8 did.
# - By default the raylet starts its workers (one per CPU) only when the driver has connected, at
#   the very end of ray.init, so the first task waits for their Python start (~0.3 s, more when
#   the machine is busy). enable_worker_prestart starts them as soon as the raylet is up, while
#   the driver is still connecting: the first shard task ran 0.25 s sooner (medians of 4 paired
#   runs on the bench machine: 2.50 s against 2.74 s from the call).
MAP_WINDOW = 2  # map_tasks: tasks submitted ahead per CPU
EMBEDDED_CONFIG = {
    "raylet_client_connect_timeout_milliseconds": 100,
    "raylet_client_num_connect_attempts": 100,
    "enable_worker_prestart": True,
}


def starts_embedded(address: str | None) -> bool:
    """Whether `connect_ray(address)` starts a cluster on this machine rather than joining one."""
    return address is None and not os.environ.get("RAY_ADDRESS")


def connect_ray(address: str | None, *, worker_logs: bool = True) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start an embedded local one.

    `worker_logs=False` keeps the workers' output off this process's terminal: a training job's
    workers print dozens of TensorFlow and Ray Train start-up lines each, and their failures
    come back as exceptions anyway (the CLI turns them off unless -v).

    Raises:
        ShardsError: Ray cannot be started or reached.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": worker_logs}
    if starts_embedded(address):
        # Embedded by default (DESIGN): never join a cluster that happens to run on this machine.
        # A copy: Ray writes the session's spilling folder into the dict it is given, and a
        # second embedded start in this process (preprocess, then train) would spill into the
        # first session's folder, removed since, with a warning about an "unstable API".
        kwargs.update(address="local", include_dashboard=False, _system_config=dict(EMBEDDED_CONFIG))
        # Token authentication stays on as Ray sets it up; only its notice that it "is enabled
        # for this Ray cluster" is dropped, which every embedded run printed. (Setting
        # RAY_AUTH_MODE=token instead made the embedded GCS refuse its own driver.)
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_token_notice)
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        check_reachable(target)
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        where = target or "a new local cluster"
        raise ShardsError(
            f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}{_auth_hint(target)}"
        ) from exc
    if callable(sigterm):
        # ray.init replaces a SIGTERM handler with its own sys.exit(); the caller's (the CLI
        # ends a run in one line, resumable) is put back.
        signal.signal(signal.SIGTERM, sigterm)


#: Seconds to open a TCP connection to a given cluster address before giving up on it.
REACH_TIMEOUT = 5.0


def check_reachable(address: str, timeout: float = REACH_TIMEOUT) -> None:
    """Refuse a `host:port` cluster address that nothing answers on, in one line and within
    seconds: Ray itself retries an absent GCS for minutes, printing a warning every few seconds.
    Other forms (`auto`, `local`, `ray://`) are left to Ray.

    Raises:
        ShardsError: the host cannot be resolved, or its port refuses or does not answer.
    """
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except socket.gaierror as exc:
        reason = f"cannot resolve {host} ({exc.strerror})"
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise ShardsError(f"cannot reach Ray at {address}: {reason}; is the cluster's head running there?")


def _auth_hint(target: str | None) -> str:
    """What to set when a cluster that uses token authentication (Ray's default since 2.5x:
    `ray start --head` writes ~/.ray/auth_token) refuses a client that sends no token."""
    if not target or os.environ.get("RAY_AUTH_MODE") == "token":
        return ""
    return (
        "; if the cluster uses token authentication, set RAY_AUTH_MODE=token (the token is read from "
        "RAY_AUTH_TOKEN or ~/.ray/auth_token)"
    )


TASK_RETRIES = 3


def cpu_task_options(*, reads_object_storage: bool) -> dict[str, Any]:
    """Options of a one-CPU Ray task that Ray retries when its worker dies; one that reads or
    writes object storage gets the driver's endpoint and credentials."""
    from shards.io import storage

    options: dict[str, Any] = {"num_cpus": 1, "max_retries": TASK_RETRIES}
    if reads_object_storage and storage.environment():
        options["runtime_env"] = {"env_vars": storage.environment()}
    return options


def map_tasks(function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """`function(item)` for every item as Ray tasks (one CPU each, retried when a worker dies),
    results in order, each fetched when the caller asks for it: the caller holds one result at a
    time, the others wait in Ray's object store (a listing of a million archives never sits on
    the driver whole). At most MAP_WINDOW tasks per CPU are submitted ahead. A task's own
    ShardsError comes back as it is, so a bad input still reads as one line."""
    import ray

    remote = ray.remote(function).options(**cpu_task_options(reads_object_storage=True))
    window = max(1, int(MAP_WINDOW * cluster_resource("CPU", 1.0)))
    pending = collections.deque(items)
    refs: collections.deque[Any] = collections.deque()
    try:
        while pending or refs:
            while pending and len(refs) < window:
                refs.append(remote.remote(pending.popleft()))
            yield ray.get(refs.popleft())
    except ray.exceptions.RayTaskError as exc:
        cause = task_cause(exc)
        if isinstance(cause, ShardsError):
            raise cause from None
        raise ShardsError(one_line(cause)) from exc
    except ray.exceptions.RayError as exc:  # a worker lost past its retries, a node gone
        raise ShardsError(f"a task was lost: {str(exc).splitlines()[0]}") from exc
    finally:
        for ref in refs:
            ray.cancel(ref)


def _token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def cluster_resource(name: str, default: float = 0.0) -> float:
    """How much of a resource (`CPU`, `GPU`) the connected cluster has in all."""
    import ray

    return float(ray.cluster_resources().get(name, default))


def task_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, unwrapped from Ray's RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def one_line(exc: BaseException) -> str:
    """`Type: cause`: how a failure reads in a `shards: error:` line.

    TensorFlow's graph errors open with a heading ("Graph execution error:"), then the node's
    Python stack, then the cause ("Received a label value of -1 which is outside ..."), then the
    node name in brackets; the heading alone says nothing, so the cause is taken from the end.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        causes = [line for line in lines[1:] if not line.startswith(_STACK_LINES)]
        text = causes[-1] if causes else text
    return f"{type(exc).__name__}: {text}"


_STACK_LINES = ("File ", "Detected at node", "[[", "Traceback", "^")


def report_to_driver(report: dict[str, Any], rank: int) -> None:
    """Hand a Ray Train worker's report to the driver (`Result.metrics["report"]`, JSON).

    Ray Train V2 hands metrics back to the driver only with a checkpoint: rank 0 attaches a
    small one holding its report; every rank reports once, as Train requires.
    """
    import json
    import tempfile

    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as handle:
                json.dump(report, handle)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"report": json.dumps(report)}, checkpoint=checkpoint)


def worker_error(exc: BaseException) -> BaseException:
    """The error a Ray Train worker raised, out of Train's wrappers: V2's `worker_failures` by
    rank, V1's exception chain, and the RayTaskError around the worker's own exception."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        exc = failures[min(failures)]
    while exc.__cause__ is not None and getattr(exc, "cause", None) is None:
        exc = exc.__cause__
    return task_cause(exc)
