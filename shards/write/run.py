"""The Ray orchestration of a preprocess run: list, plan, one task per shard, commit.

Everything that can be refused is refused before any task runs, and nearly always before Ray
starts: bad options, a missing or empty SRC, a DEST that holds another run. A helper thread lists
SRC, plans the shards and claims DEST; a listing that takes longer than LISTING_HEAD_START
overlaps Ray's start-up instead of adding to it. Tasks are submitted with `ray.wait` back-pressure (about one
per CPU in flight), return only small receipts, and are retried by Ray when a worker dies.
The manifest is written last.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from shards.cluster import (
    TASK_RETRIES,
    check_workers,
    cluster_resource,
    connect_ray,
    cpu_task_options,
    map_tasks,
    one_line,
    starts_embedded,
    task_cause,
)
from shards.errors import ConfigError, RejectLimitError, ShardsError
from shards.formats import check_format
from shards.io import storage
from shards.io.scratch import check_scratch
from shards.layout.manifest import (
    HOW_TO_PROCEED,
    Manifest,
    Receipt,
    reason_kind,
    run_key,
)
from shards.layout.plan import ShardSpec, plan_shards
from shards.options import PreprocessOptions
from shards.sources import check_source, describe_source, indexes_on_cluster, list_sources
from shards.sources.arrays import ArrayInputs
from shards.sources.inputs import ChainedInputs
from shards.write import append
from shards.write.destination import MODES
from shards.write.resample import warm_up
from shards.write.sink import DestinationSink, RunIdentity
from shards.write.task import PackedTask, ShardTask, write_shard, write_shard_on_node

logger = logging.getLogger(__name__)

LISTING_HEAD_START = 0.5  # seconds: a listing done by then fails or succeeds before Ray starts
ABANDON_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands, passed to the progress callback after each shard."""

    shards_done: int
    shards_total: int
    inputs_done: int
    inputs_total: int
    written: int
    rejected: int
    elapsed: float  # seconds of shard work: Ray's start-up excluded, as in the summary's rate
    inputs_kept: int = 0  # of inputs_done, those of shards a resumed run kept: not this run's work

    @property
    def images_per_second(self) -> float:
        """This run's rate: the inputs it read itself, over its seconds of shard work."""
        return (self.inputs_done - self.inputs_kept) / self.elapsed if self.elapsed > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a finished run wrote, for the CLI's summary and for scripts."""

    dest: str
    inputs: int
    written: int
    rejected: int
    shards: int
    resumed_shards: int
    bytes: int
    seconds: float
    ray_start_seconds: float
    reject_reasons: dict[str, int]
    steady_images_per_second: float = 0.0
    startup_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Inputs per second of the whole run, Ray's start-up excluded."""
        work = self.seconds - self.ray_start_seconds
        return self.inputs / work if work > 0 else 0.0


def with_fields(options: PreprocessOptions, fields: dict[str, Any]) -> PreprocessOptions:
    """`options` with some fields replaced (validated again).

    Raises:
        ConfigError: a keyword that is not a field, by name, with the fields there are.
    """
    known = [field.name for field in dataclasses.fields(PreprocessOptions)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"preprocess() got an unknown option {unknown[0]!r} (options: {', '.join(known)})")
    return dataclasses.replace(options, **fields) if fields else options


def preprocess(
    src: Any,
    dest: str,
    options: PreprocessOptions | None = None,
    *,
    mode: str = "new",
    address: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    worker_logs: bool = True,
    allow_duplicates: bool = False,
    **option_fields: Any,
) -> RunSummary:
    """Turn SRC into shards in DEST on Ray.

    Options come as a `PreprocessOptions`, or as its fields by keyword, as Keras users write
    them: `shards.preprocess(src, dest, size=224, dtype="float16", resize="stretch")` (keywords
    given with `options` replace those fields of it).

    Args:
        src: a folder of class folders or a flat folder; a CSV/Parquet list of paths; tar
            archives (one, a folder of them, or a pattern such as `data-{000000..000099}.tar`);
            Parquet with image bytes; local or s3:// / gs://. Or NumPy arrays: `x` or `(x, y)`,
            `x` uint8 or float [N, H, W, C] (or a list of [H, W, C] arrays), `y` labels.
        dest: the output folder, or an s3:// / gs:// prefix (shards are staged on each worker
            and uploaded once complete; the manifest is uploaded last).
        options: what to produce (default: `PreprocessOptions()`, 224x224 uint8, centre crop).
        mode: `new` (DEST must not hold a run), `resume` (keep verified shards of the same run,
            or finish an append cut short), `overwrite` (remove a previous run first) or `append`
            (add SRC's samples to the finished run in DEST, as new shards).
        address: a Ray cluster to join; None starts an embedded one (or joins RAY_ADDRESS). A
            host:port that nothing answers on is refused within seconds.
        workers: the most shard tasks in flight; default: the cluster's CPUs. 0 writes the
            shards in this process, one after another, without Ray (as a DataLoader's
            `num_workers=0`): the same files, for a small set, a debugger, or a test.
        on_progress: called after every finished shard.
        worker_logs: show the shard tasks' output on this terminal (`shards -q` turns it off).
        allow_duplicates: with mode `append`, add SRC even when the run, or an append of it,
            was made from the same inputs (refused by default: every sample would come twice).
        **option_fields: `PreprocessOptions` fields (size, resize, dtype, format, shard_size,
            seed, ...).

    Raises:
        ConfigError, SourceError, DestinationError: before any Ray work starts.
        RejectLimitError: more inputs were refused than the options allow.
        ShardsError: a shard task failed for a reason other than a bad input.
    """
    started, begun = time.perf_counter(), time.time()
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_workers(workers, least=0)
    here = workers == 0
    if here and address is not None:
        raise ConfigError("--workers 0 writes the shards in this process, without Ray; it takes no --address")
    options = with_fields(options or PreprocessOptions(), option_fields)
    base = None
    if mode == "resume" and append.unfinished_append(dest) is not None:
        mode = "append"  # an append cut short: --resume finishes it
    if mode == "append":
        base = append.base_run(dest)
        options = append.append_options(dest, base, options, given=option_fields)
    check_format(options.format, options.compression)
    check_source(src)
    check_scratch()
    head_start: float | None = LISTING_HEAD_START
    ray_start_seconds = 0.0
    on_cluster = indexes_on_cluster(src) and not here
    if on_cluster:  # the archives' index is built by Ray tasks: Ray first
        ray_start_seconds = _timed_connect(address, worker_logs)
        head_start = None
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="shards-list") as pool:
        preparing = pool.submit(_claim_destination, src, dest, options, mode, on_cluster, base, allow_duplicates)
        # An embedded cluster's workers share this machine, and numba's cache: the resampler is
        # compiled once, here, while Ray starts, instead of by every worker at once. Ray is
        # imported first: OpenCV's import (in the warm-up) puts back a copy of sys.path taken
        # before, which drops the folder Ray adds to it while it imports (its vendored colorama).
        warming = None
        if not here and starts_embedded(address):
            import ray  # noqa: F401

            warming = pool.submit(warm_up)
        try:
            # concurrent.futures.TimeoutError: on 3.10 it is not the builtin TimeoutError
            with contextlib.suppress(concurrent.futures.TimeoutError):
                preparing.result(timeout=head_start)  # the listing's own error, if it ended in one
            # Ray starts on this thread: it ties the life of the processes it forks to the thread
            # that forked them (PR_SET_PDEATHSIG), so the helper thread could not start it.
            if not on_cluster and not here:
                ray_start_seconds = _timed_connect(address, worker_logs)
        except BaseException as exc:
            refusal = _listing_refusal(preparing) if isinstance(exc, ShardsError) else None
            _release(preparing)
            if refusal is not None:
                raise refusal from None
            raise
        sink, kept = preparing.result()
        if warming is not None:
            warming.result()
    try:
        limit = 1 if here else workers or max(1, int(cluster_resource("CPU", 1.0)))
        run = _ShardRun(sink, kept, on_progress, started, work_started=time.perf_counter(), begun=begun)
        try:
            if here:
                run.execute_here()
            else:
                run.execute(_tasks_in_flight(workers, limit))
        except _RejectLimitReached as exc:
            run.commit(complete=False, workers=limit, ray_start_seconds=ray_start_seconds)
            over = f"{sink.run.src}: {exc.rejected} inputs rejected, over the --max-rejects limit of {run.reject_limit}"
            if base is None:
                raise RejectLimitError(f"{over} (see {sink.dest}/rejects.jsonl): {HOW_TO_PROCEED}") from None
            if sink.discarded:
                raise RejectLimitError(
                    f"{over}; nothing was appended and {sink.dest} is as it was (append again with a higher "
                    "--max-rejects, or without those inputs)"
                ) from None
            raise RejectLimitError(  # an append's rejects join rejects.jsonl when it commits
                f"{over}; the append waits: finish it with --resume and a higher --max-rejects"
            ) from None
        written = run.inputs_done - run.rejected
        summary = run.commit(complete=written > 0, workers=limit, ray_start_seconds=ray_start_seconds)
    except BaseException:
        sink.on_failed()
        raise
    if written == 0:
        if base is not None:  # taken back whole (DestinationSink._commit_append): rejects.jsonl is the run's
            reasons = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.reject_reasons.items()))
            raise RejectLimitError(
                f"{sink.run.src}: all {summary.inputs} inputs were rejected ({reasons}); nothing was appended "
                f"and {sink.dest} is as it was"
            )
        raise RejectLimitError(
            f"{sink.run.src}: all {summary.inputs} inputs were rejected; see {sink.dest}/rejects.jsonl"
        )
    return summary


def _timed_connect(address: str | None, worker_logs: bool) -> float:
    """`connect_ray`, and the seconds it took: the summary reports Ray's start-up apart (it
    used to read 0 for tar archives, whose index needs Ray before the listing)."""
    started = time.perf_counter()
    connect_ray(address, worker_logs=worker_logs)
    return time.perf_counter() - started


def _packed(task: ShardTask) -> ShardTask | PackedTask:
    """`task` as it is submitted: deflated, unless its inputs are pixels already in memory
    (arrays deflate poorly, and a 256 MiB shard of them would cost the driver a second)."""
    parts = task.inputs.parts if isinstance(task.inputs, ChainedInputs) else (task.inputs,)
    if any(isinstance(part, ArrayInputs) for part in parts):
        return task
    return PackedTask.of(task)


def _tasks_in_flight(workers: int | None, limit: int) -> int:
    """How many shard tasks the driver keeps submitted for `limit` workers.

    With the default `workers` (every CPU of the cluster) one more task per worker waits in
    Ray's queue, and Ray hands it to a worker the moment that worker's shard is done. Otherwise
    the worker waits until the driver has seen the result and submitted the next: ~4 ms a shard
    on the bench machine, where every core is busy and the driver has to be scheduled first
    (steady state +2.3% over 6 paired runs, 2,804 against 2,741 img/s; within the VM's noise in a
    later series of 5). Ray still runs one task per CPU. An explicit `workers` is a cap that Ray
    does not know about, so no task waits beyond it. Should the run fail, a queued task may
    start before it is cancelled; a shard it finishes is kept for --resume.
    """
    return limit if workers is not None else 2 * limit


def _claim_destination(
    src: Any,
    dest: str,
    options: PreprocessOptions,
    mode: str,
    on_cluster: bool,
    base: Manifest | None = None,
    allow_duplicates: bool = False,
) -> tuple[DestinationSink, dict[str, Receipt]]:
    """List SRC, plan the shards and claim DEST: the work that overlaps Ray's start-up.

    Returns the sink, which holds DEST's lock from here to the commit, and the receipts of the
    shards a resumed run keeps. With `base` (an append), SRC's targets are put in the run's
    terms and its shards planned after the run's, of the run's size.
    """
    listing = list_sources(src, exclude=dest, mapper=map_tasks if on_cluster else None, **options.listing_arguments())
    if base is None:
        key = run_key(listing.fingerprint(), options)
        per_shard, first = options.samples_per_shard(len(listing)), 0
    else:
        inputs = run_key(listing.fingerprint(), options)  # the key a run of MORE alone would have
        if not allow_duplicates:
            append.refuse_duplicate(dest, base, inputs)
        listing = listing.into(base.targets, describe_source(src))
        key = append.append_key(str(base.record.get("run_key")), listing.fingerprint(), options)
        per_shard, first = (
            int(base.record.get("samples_per_shard") or options.samples_per_shard(len(listing))),
            len(base.shards),
        )
    plan = plan_shards(len(listing), per_shard, options.seed, shuffle=not listing.keeps_order, first=first)
    listing = listing.planned(plan.order, plan.samples_per_shard)
    identity = RunIdentity(describe_source(src), listing, options, key, plan, base, key if base is None else inputs)
    sink = DestinationSink(dest, identity, mode=mode)
    return sink, sink.on_start()


LISTING_GRACE = 10.0  # seconds a failed Ray start waits for the listing's own refusal


def _listing_refusal(preparing: concurrent.futures.Future[Any]) -> BaseException | None:
    """The listing's own refusal (no such SRC, a DEST that holds another run), when Ray failed
    to start first: it is the one the user can act on, and it names no cluster. A listing still
    going after LISTING_GRACE is not waited for."""
    with contextlib.suppress(concurrent.futures.TimeoutError):
        return preparing.exception(timeout=LISTING_GRACE)
    return None


def _release(preparing: concurrent.futures.Future[tuple[DestinationSink, dict[str, Receipt]]]) -> None:
    """Ray failed to start, or the run was interrupted before its tasks: let go of DEST once the
    listing has claimed it, so the next run finds DEST as it was."""
    with contextlib.suppress(Exception):
        sink, _ = preparing.result()
        sink.on_abandoned()


class _ShardRun:
    """Submits one task per pending shard with back-pressure and gathers their receipts."""

    def __init__(
        self,
        sink: DestinationSink,
        kept: dict[str, Receipt],
        on_progress: Callable[[Progress], None] | None,
        started: float,
        *,
        work_started: float,
        begun: float,
    ) -> None:
        self.sink, self.dest = sink, sink.dest
        self.src, self.listing, self.plan = sink.run.src, sink.run.listing, sink.run.plan
        self.options, self.key = sink.run.options, sink.run.key
        self.receipts = dict(kept)
        self.kept = set(kept)
        self.resumed = len(kept)
        # Running totals, so progress and the reject limit cost O(1) per finished shard.
        self.inputs_done = self.inputs_kept = sum(r.shard.count + len(r.rejects) for r in kept.values())
        self.rejected = sum(len(r.rejects) for r in kept.values())
        self.on_progress = on_progress
        self.started, self.work_started, self.begun = started, work_started, begun
        self.reject_limit = self.options.reject_limit(len(self.listing))

    def execute(self, in_flight_limit: int) -> None:
        import ray

        remote = storage.is_remote(self.dest) or self.listing.remote
        task = ray.remote(write_shard_on_node).options(**cpu_task_options(reads_object_storage=remote))
        # Specs are made as they are submitted: a spec holds its shard's positions.
        pending = (spec for spec in self.plan if spec.name not in self.receipts)
        upcoming = next(pending, None)
        in_flight: dict[Any, ShardSpec] = {}
        self._report()
        try:
            while upcoming is not None or in_flight:
                while upcoming is not None and len(in_flight) < in_flight_limit:
                    in_flight[task.remote(_packed(self._task(upcoming)))] = upcoming
                    upcoming = next(pending, None)
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    spec = in_flight.pop(ref)
                    self._finished(spec, self._result(ref, spec))
            # Again when nothing was left to run: a resumed run must not commit past its limit
            # on rejects that its kept shards recorded.
            self._check_rejects()
        except BaseException as exc:
            _abandon(list(in_flight), interrupted=not isinstance(exc, Exception))
            raise

    def execute_here(self) -> None:
        """Write each pending shard in this process, in plan order: `workers=0`, no Ray."""
        self._report()
        for spec in self.plan:
            if spec.name in self.receipts:
                continue
            try:
                receipt = write_shard(self._task(spec))
            except Exception as exc:
                raise ShardsError(f"{spec.name}: {self._failure(exc)}") from exc
            self._finished(spec, receipt)
        self._check_rejects()

    def _finished(self, spec: ShardSpec, receipt: Receipt) -> None:
        self.receipts[spec.name] = receipt
        for reject in receipt.rejects:  # the task's own log stays on its worker
            logger.info("rejected %s: %s", reject.source, reject.reason)
        self.inputs_done += receipt.shard.count + len(receipt.rejects)
        self.rejected += len(receipt.rejects)
        self._report()
        self._check_rejects()

    def _task(self, spec: ShardSpec) -> ShardTask:
        rows = self.listing.shard_rows(spec.positions)
        return ShardTask(
            self.dest,
            spec.name,
            spec.positions,
            rows.names,
            self.listing.run_targets,
            rows.values,
            rows.problems,
            rows.inputs,
            self.options,
            self.key,
        )

    def _result(self, ref: Any, spec: ShardSpec) -> Receipt:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise ShardsError(f"{spec.name}: {self._failure(task_cause(exc))}") from exc
        except ray.exceptions.RayError as exc:
            raise ShardsError(
                f"{spec.name}: task lost after {TASK_RETRIES} retries: {str(exc).splitlines()[0]}"
            ) from exc

    def _failure(self, cause: BaseException) -> str:
        """A task's failure in one line that names the cause a user can act on."""
        where = self.sink.place.describe_writes()
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return (
                f"no space left on the device of {where}; free some space and rerun with --resume "
                "(finished shards are kept)"
            )
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write to {where} ({cause.strerror}); fix its permissions and rerun with --resume"
        return f"task failed: {one_line(cause)}"

    def _check_rejects(self) -> None:
        if self.reject_limit is not None and self.rejected > self.reject_limit:
            raise _RejectLimitReached(self.rejected)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            Progress(
                len(self.receipts),
                len(self.plan),
                self.inputs_done,
                len(self.listing),
                self.inputs_done - self.rejected,
                self.rejected,
                time.perf_counter() - self.work_started,
                self.inputs_kept,
            )
        )

    def commit(self, *, complete: bool, workers: int, ray_start_seconds: float) -> RunSummary:
        """Commit the finished shards through the sink, in plan order, and summarise the run."""
        receipts = [self.receipts[name] for name in self.plan.names() if name in self.receipts]
        seconds = time.perf_counter() - self.started
        run_info = {
            "workers": workers,
            "seconds": round(seconds, 3),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nodes": {r.shard.name: r.node for r in receipts},
        }
        try:
            record = self.sink.on_complete(receipts, complete=complete, run_info=run_info)
        except OSError as exc:  # the driver's own files: index, rejects, manifest
            raise ShardsError(f"cannot commit the run: {self._failure(exc)}") from exc
        rejects = [reject for receipt in receipts for reject in receipt.rejects]
        return RunSummary(
            self.dest,
            len(self.listing),
            int(record["count"]) - (self.sink.run.base.count if self.sink.run.base is not None else 0),
            len(rejects),
            len(receipts),
            self.resumed,
            sum(r.shard.bytes for r in receipts),
            seconds,
            ray_start_seconds,
            dict(collections.Counter(reason_kind(r.reason) for r in rejects)),
            self._steady_rate(),
            self._startup(),
        )

    def _startup(self) -> float:
        """Seconds from the call to the first shard task starting: listing, planning and Ray's
        start-up, as far as they did not overlap (0 when every shard was kept)."""
        fresh = [r.started for r in self.receipts.values() if r.started and r.shard.name not in self.kept]
        return max(0.0, min(fresh) - self.begun) if fresh else 0.0

    def _steady_rate(self) -> float:
        """Inputs per second between the first shard task starting and the last finishing, for
        the shards this run wrote: the pipeline's own speed, without start-up or commit."""
        fresh = [r for r in self.receipts.values() if r.finished and r.shard.name not in self.kept]
        if not fresh:
            return 0.0
        span = max(r.finished for r in fresh) - min(r.started for r in fresh)
        return sum(r.shard.count + len(r.rejects) for r in fresh) / span if span > 0 else 0.0


def _abandon(refs: list[Any], *, interrupted: bool) -> None:
    """Settle the tasks still in flight after the run failed, and collect what they leave, so
    Ray has no unretrieved error to print as an "Unhandled error" traceback after the run's own
    one-line reason.

    After a failure they are given ABANDON_SECONDS to finish: a failure such as a full disk ends
    them soon, and a shard that finishes is kept for `--resume`. Those still running then are
    cancelled with force: a polite cancel raises KeyboardInterrupt inside the task, which can
    surface as a traceback of the task's reading threads; a killed worker leaves at most a
    temporary file, which `--resume` removes.

    On Ctrl-C or SIGTERM they are left alone: the process is about to end, and its end ends them
    (the embedded cluster stops with the driver; a joined cluster kills the tasks of a driver
    that has gone). Cancelling them with force here raced with their replies in Ray 2.60: at
    exit the core worker aborted the process after the one-line message ("Tried to complete
    task that was not pending", task_manager.cc), turning exit 143 into 1 in 2 of 3 full test
    runs on the 2-core machine.
    """
    import ray

    if not refs or interrupted:
        return
    ready, running = ray.wait(refs, num_returns=len(refs), timeout=ABANDON_SECONDS)
    for ref in running:
        ray.cancel(ref, force=True)
    for ref in [*ready, *running]:
        with contextlib.suppress(Exception):
            ray.get(ref, timeout=ABANDON_SECONDS)


class _RejectLimitReached(ShardsError):
    def __init__(self, rejected: int) -> None:
        super().__init__(rejected)
        self.rejected = rejected
