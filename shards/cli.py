"""The `shards` command: preprocess, inspect, verify, preview, plan, train, predict.

The CLI owns the terminal: a progress bar on a terminal, plain log lines otherwise (CI, `ray job
logs`), a summary at the end, and on failure one line `shards: error: <reason>` with a non-zero
exit. Arguments are validated before Ray is imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from shards.errors import ConfigError, ManifestError, ShardsError, SourceError

EXIT_USAGE = 2
EXIT_FAILURE = 1
LOG_EVERY_SECONDS = 10.0


EXAMPLES = {
    "preprocess": [
        "shards preprocess photos/ out/ --size 224",
        "shards preprocess list.csv s3://bucket/run --dtype float16 --workers 8 --address auto",
        "shards preprocess photos/ out/ --resume --max-rejects 1%",
    ],
    "inspect": ["shards inspect out/", "shards inspect s3://bucket/run --json"],
    "verify": ["shards verify out/"],
    "preview": ["shards preview out/ -o preview.png --n 8 --per-class"],
    "plan": ["shards plan photos/ --size 224 --dtype float16 --memory 16GiB"],
    "train": [
        "shards train out/ --epochs 10 --validation-split 0.1",
        "shards train out/ --workers 4 --checkpoint-dir ckpt --resume",
    ],
    "predict": ["shards predict out/ --model model.keras --out predictions.parquet"],
}


def _add_command(commands: Any, name: str, summary: str, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A subcommand with its summary, its examples under --help, and -v/-q after it too."""
    examples = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    return commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=examples,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    from shards.version import DISTRIBUTION, installed_version

    parser = argparse.ArgumentParser(
        prog="shards",
        description=__doc__.splitlines()[0],
        epilog="Run `shards COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"shards {installed_version()} ({DISTRIBUTION})")
    _add_verbosity(parser, default=False)
    # The same flags after the subcommand; SUPPRESS keeps them from resetting what came before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _add_command(commands, "preprocess", "turn an image folder or list into shards, on Ray", common)
    add_preprocess_arguments(run)

    inspect = _add_command(commands, "inspect", "summarise a shards run", common)
    inspect.add_argument("dest", help="a shards run (folder or s3:// / gs:// prefix)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")

    verify = _add_command(commands, "verify", "check every shard of a run against its manifest", common)
    verify.add_argument("dest", help="a shards run (folder or s3:// / gs:// prefix)")

    preview = _add_command(commands, "preview", "a contact sheet of samples, rendered from the shards", common)
    preview.add_argument("dest", help="a shards run (folder or s3:// / gs:// prefix)")
    preview.add_argument("-o", "--output", required=True, help="the PNG to write")
    preview.add_argument("--overwrite", action="store_true", help="replace an -o file that exists")
    preview.add_argument("--n", type=int, default=64, help="samples (per class with --per-class); default 64")
    preview.add_argument("--per-class", action="store_true", help="one row of samples per class")
    preview.add_argument("--seed", type=int, default=0, help="which samples are drawn (default 0)")

    plan = _add_command(commands, "plan", "what a preprocess run will produce, without running it", common)
    plan.add_argument("src", help="what `shards preprocess` would read")
    _add_output_arguments(plan)
    plan.add_argument("--batch-size", type=int, default=256, help="a training batch size to size (default 256)")
    plan.add_argument("--memory", default=None, help="a memory budget, e.g. 16GiB: the largest batch that fits")
    plan.add_argument("--json", action="store_true", help="print the figures as JSON")

    from shards.model_cli import add_predict_arguments, add_train_arguments

    add_train_arguments(_add_command(commands, "train", "train a Keras model on a shards run, on Ray", common))
    add_predict_arguments(
        _add_command(commands, "predict", "predict a shards run with a Keras model, into Parquet", common)
    )
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log details (every reject as it happens)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="errors only: no progress, no warnings"
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What the samples and shards will be: shared by `preprocess` and `plan`."""
    parser.add_argument("--size", default=None, help="output size: N or HxW (default 224)")
    parser.add_argument("--resize", default=None, help="stretch | crop | pad (default crop)")
    parser.add_argument("--dtype", default=None, help="uint8 | float16 | bfloat16 | float32 (default uint8)")
    parser.add_argument(
        "--shard-size",
        default=None,
        help="image bytes per shard, e.g. 64MiB; auto (default): 64 shards of 4-256 MiB, from the input count",
    )
    parser.add_argument("--seed", default=None, help="seed of the shard plan's permutation (default 0)")


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """The preprocess options, shared by `shards preprocess` and `jobs/preprocess.py`."""
    from shards.formats import FORMATS

    parser.add_argument(
        "src",
        help="folder of class folders or flat; CSV/Parquet list of paths; .tar archives (a file, a folder, "
        "or a pattern such as data-{000000..000099}.tar); Parquet with image bytes",
    )
    parser.add_argument("dest", help="output folder, or an s3:// / gs:// prefix")
    _add_output_arguments(parser)
    parser.add_argument("--format", default=None, help=f"{' | '.join(FORMATS)} (default npy)")
    compressed = {f.name: [c for c in f.compressions if c != "none"] for f in FORMATS.values()}
    compressions = ", ".join(f"{' | '.join(c)} for {name} shards" for name, c in compressed.items() if c)
    parser.add_argument("--compression", default=None, help=f"none, or {compressions} (default none)")
    parser.add_argument("--max-rejects", default=None, help="fail past N rejected inputs, or P%% of them")
    parser.add_argument(
        "--max-input-bytes", default=None, help="reject any input larger than this, unread (default 256MiB)"
    )
    parser.add_argument(
        "--image-column", default=None, help="Parquet/CSV column of image bytes or paths (default image, else path)"
    )
    parser.add_argument(
        "--label-column",
        default=None,
        help="column of targets (default label); its type sets the kind: names or integers (class), lists "
        "(multi-label), floats (regression); a,b for several (multi-output)",
    )
    parser.add_argument(
        "--columns", default=None, help="other columns to carry into index.parquet, comma-separated (e.g. id,caption)"
    )
    parser.add_argument(
        "--url-column",
        default=None,
        help="column of http(s) URLs that the shard tasks fetch (default url, in a list with no image or path column)",
    )
    parser.add_argument(
        "--fetch-timeout",
        default=None,
        help="seconds a URL fetch waits to connect and for each read (default 10; 6x that in all)",
    )
    parser.add_argument(
        "--ignore-robots-headers",
        action="store_true",
        help="fetch images whose server says X-Robots-Tag: noai, noimageai, noindex or noimageindex",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch URLs whose address is loopback, private, link-local or otherwise not public (refused by default)",
    )
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3-compatible endpoint for s3:// SRC or DEST (default: AWS_ENDPOINT_URL, else AWS)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="shard tasks in flight (default: cluster CPUs; 0: no Ray, this process writes the shards in turn)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep verified shards of the same run, redo the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace the run DEST holds")
    mode.add_argument(
        "--append",
        action="store_true",
        help="add SRC's samples to the finished run in DEST as new shards, with the run's own options",
    )
    parser.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="with --append: add SRC even if the run or one of its appends already holds the same inputs",
    )


def options_from_arguments(args: argparse.Namespace) -> Any:
    """Build and validate PreprocessOptions from parsed arguments (raises ConfigError)."""
    from shards.options import PreprocessOptions

    return PreprocessOptions(**given_options(args))


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The PreprocessOptions fields the command line gave, parsed; the rest keep their
    defaults. An append (`--append`) refuses a given option that differs from the run's, even
    one given at its default (`--size 224` onto a 16 px run)."""
    from shards.options import parse_max_rejects

    fields: dict[str, Any] = {}
    for name in ("size", "resize", "dtype", "format", "shard_size", "compression", "max_input_bytes"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if args.seed is not None:
        try:
            fields["seed"] = int(args.seed)
        except ValueError:
            raise ConfigError(f"--seed must be a non-negative integer, got {args.seed!r}") from None
    count, fraction = parse_max_rejects(getattr(args, "max_rejects", None))
    fields.update({"max_rejects": count} if count is not None else {})
    fields.update({"max_reject_fraction": fraction} if fraction is not None else {})
    for name in ("image_column", "label_column", "columns", "url_column"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "fetch_timeout", None) is not None:
        fields["fetch_timeout"] = _seconds(args.fetch_timeout, "--fetch-timeout")
    for name in ("ignore_robots_headers", "allow_private_urls"):
        if getattr(args, name, False):
            fields[name] = True
    return fields


def _seconds(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number of seconds, got {text!r}") from None


def run_preprocess(args: argparse.Namespace) -> int:
    fields = given_options(args)
    options_from_arguments(args)  # every option checked before anything else
    from shards.io.storage import endpoint
    from shards.write.run import preprocess  # refuses bad --workers and paths before Ray starts

    mode = "resume" if args.resume else "overwrite" if args.overwrite else "append" if args.append else "new"
    with endpoint(args.endpoint_url), _ProgressDisplay(quiet=args.quiet) as display:
        called = process_seconds()
        summary = preprocess(
            args.src,
            args.dest,
            mode=mode,
            address=args.address,
            workers=args.workers,
            on_progress=display.update,
            worker_logs=not args.quiet,
            allow_duplicates=args.allow_duplicates,
            **fields,
        )
    shutdown = _stop_ray()
    if not args.quiet:  # -q: errors only
        _print_summary(summary, before=called, shutdown=shutdown)
    return 0


def process_seconds() -> float:
    """How long this process has run, from the kernel's own record of its start (so the figure
    counts the interpreter's start and every import, as `time shards ...` does)."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            started = int(stat.read().rsplit(b")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):  # not Linux: since this module was imported
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


def _stop_ray() -> float:
    """Shut Ray down now rather than at exit (where Ray's own hook first sleeps 0.5 s), so the
    summary that follows can count it; the seconds it took."""
    if "ray" not in sys.modules:
        return 0.0
    import ray

    begun = time.perf_counter()
    if ray.is_initialized():
        ray.shutdown()
    return time.perf_counter() - begun


def _print_summary(summary: Any, *, before: float = 0.0, shutdown: float = 0.0) -> None:
    """The run's figures; its time is the whole process's so far (`before`: the seconds before
    `preprocess` was called: the interpreter and the imports; `shutdown`: Ray's)."""
    rows = [
        ("inputs", f"{summary.inputs:,}"),
        (
            "written",
            f"{summary.written:,} samples in {summary.shards} shard(s)"
            + (f" ({summary.resumed_shards} kept from before)" if summary.resumed_shards else ""),
        ),
        (
            "rejected",
            f"{summary.rejected:,}"
            + "".join(f"\n  {n:,} {reason}" for reason, n in sorted(summary.reject_reasons.items())),
        ),
        ("output", f"{summary.bytes / 1e6:,.1f} MB in {summary.dest}"),
        (
            "time",
            f"{process_seconds():.1f} s, the whole process (start-up {before + summary.startup_seconds:.1f} s, "
            f"of which Ray {summary.ray_start_seconds:.1f} s; Ray's shutdown {shutdown:.1f} s), "
            f"{summary.images_per_second:,.0f} images/s",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


class _ProgressDisplay:
    """A tqdm bar on a terminal; a log line every LOG_EVERY_SECONDS otherwise; nothing when quiet."""

    def __init__(self, *, quiet: bool = False) -> None:
        self._bar: Any = None
        self._interactive = sys.stderr.isatty()
        self._last_log = 0.0
        self._quiet = quiet

    def __enter__(self) -> _ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, progress: Any) -> None:
        if self._quiet:
            return
        if self._interactive:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=progress.inputs_total, unit="img", dynamic_ncols=True)
            self._bar.n = progress.inputs_done
            self._bar.set_postfix(
                shards=f"{progress.shards_done}/{progress.shards_total}", rejected=progress.rejected, refresh=False
            )
            self._bar.refresh()
            return
        now = time.monotonic()
        finished = progress.shards_done == progress.shards_total
        if finished or now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            rate = progress.images_per_second
            left = progress.inputs_total - progress.inputs_done
            eta = f", ETA {left / rate:,.0f} s" if rate and left else ""
            print(
                f"progress: {progress.inputs_done:,}/{progress.inputs_total:,} images, shards "
                f"{progress.shards_done}/{progress.shards_total}, rejected {progress.rejected:,}, "
                f"{rate:,.0f} images/s{eta}",
                file=sys.stderr,
                flush=True,
            )


def _target_lines(targets: list[dict[str, Any]], class_counts: dict[str, int]) -> list[str]:
    """What `inspect` prints of the targets: counts per class (a multi-label class counts the
    samples that have it), or a regression target's min/mean/max per value."""
    if len(targets) == 1 and targets[0]["kind"] == "class":  # as before targets had kinds
        return [
            f"{'classes':<9} {len(class_counts)}",
            *(f"  {name}: {count:,}" for name, count in class_counts.items()),
        ]
    lines = []
    for target in targets:
        stats, kind = target.get("stats") or {}, target["kind"]
        width = f"[{target['width']}]" if kind == "regression" and target["width"] else ""
        lines.append(
            f"{'target':<9} {target['name']}: {kind}{width}, {len(target['classes'])} classes"
            if kind != "regression"
            else f"{'target':<9} {target['name']}: {kind}{width}"
        )
        if kind != "regression":
            lines += [f"  {name}: {count:,}" for name, count in zip(target["classes"], stats.get("counts", []))]
        elif stats.get("min"):
            for i, values in enumerate(zip(stats["min"], stats["mean"], stats["max"])):
                label = f"[{i}] " if target["width"] else ""
                lines.append(f"  {label}min {values[0]:.4g}  mean {values[1]:.4g}  max {values[2]:.4g}")
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    from shards.layout.manifest import MANIFEST, PARTS, RUN_RECORD, load_manifest, read_json

    if read_json(args.dest, MANIFEST) is None:
        claim = read_json(args.dest, f"{PARTS}/{RUN_RECORD}")
        if claim is not None:
            return _inspect_unfinished(args, claim)
    manifest = load_manifest(args.dest, allow_incomplete=True)
    record = manifest.record
    config = record["config"]
    summary = {
        "dest": args.dest,
        "source": record.get("source"),
        "format": manifest.format,
        "complete": manifest.complete,
        "count": manifest.count,
        "shape": list(manifest.shape),
        "dtype": manifest.dtype,
        "size": "x".join(str(v) for v in config["size"]),
        "resize": config["resize"],
        "classes": dict(zip(manifest.classes, record.get("class_counts", []))),
        "targets": record.get("targets") or [{**t.to_json(), "stats": {}} for t in manifest.targets.items],
        "shards": len(manifest.shards),
        "samples_per_shard": record.get("samples_per_shard"),
        "bytes": sum(s.bytes for s in manifest.shards),
        "inputs": record.get("inputs"),
        "rejected": manifest.rejected,
        "config": record["config"],
        "rejects_by_reason": _rejects_by_reason(args.dest),
        "appended": [{k: v for k, v in entry.items() if k != "run"} for entry in record.get("appended", [])],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    keys = ("dest", "source", "format", "complete", "count", "shape", "dtype", "size", "resize")
    for key in keys:
        print(f"{key:<9} {summary[key]}")
    print(f"{'shards':<9} {summary['shards']}{_shard_sizing(summary['samples_per_shard'], config.get('shard_size'))}")
    for key in ("inputs", "rejected"):
        print(f"{key:<9} {summary[key]}")
    print(f"{'bytes':<9} {summary['bytes'] / 1e6:,.1f} MB")
    for entry in summary["appended"]:
        print(f"{'appended':<9} {entry['count']:,} samples in {entry['shards']} shard(s) from {entry['source']}")
    for line in _target_lines(summary["targets"], summary["classes"]):
        print(line)
    for reason, count in summary["rejects_by_reason"].items():
        print(f"  rejected, {reason}: {count:,}")
    if not manifest.complete:
        from shards.layout.manifest import HOW_TO_PROCEED

        print(f"the run failed its --max-rejects limit: {HOW_TO_PROCEED}")
    return 0


def _shard_sizing(samples_per_shard: int | None, shard_size: int | None) -> str:
    """How the shards were cut, for `inspect` and `plan`: `of up to 27 samples (--shard-size auto)`."""
    if samples_per_shard is None:  # written before 0.3.0
        return ""
    chosen = "auto" if shard_size is None else f"{shard_size:,} bytes"
    return f" of up to {samples_per_shard:,} samples (--shard-size {chosen})"


def _inspect_unfinished(args: argparse.Namespace, claim: dict[str, Any]) -> int:
    """A run cut short (no manifest yet): how far it got and the command that resumes it."""
    from shards.io.location import location
    from shards.layout.manifest import PARTS

    finished = sorted(n for n in location(args.dest).names(PARTS) or [] if n.startswith("shard-"))
    config = claim.get("config", {})
    command = _resume_command(str(claim.get("source")), args.dest, config)
    summary = {
        "dest": args.dest,
        "source": claim.get("source"),
        "complete": False,
        "finished_shards": len(finished),
        "config": config,
        "resume": command,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{'dest':<9} {args.dest}")
    print(f"{'source':<9} {claim.get('source')}")
    print(f"{'complete':<9} False: the run was cut short before its manifest was written")
    print(f"{'finished':<9} {len(finished):,} shard(s), kept by a resume after their checksums verify")
    print(f"resume with: {command}")
    return 0


def _resume_command(source: str, dest: str, config: dict[str, Any]) -> str:
    """The `shards preprocess ... --resume` that continues a run with the options it started
    with: every recorded option that differs from its default (`PreprocessOptions.command_flags`)."""
    import shlex

    from shards.options import PreprocessOptions

    flags = PreprocessOptions.from_json(config).command_flags()
    return " ".join(["shards preprocess", shlex.quote(source), shlex.quote(dest), *flags, "--resume"])


def _rejects_by_reason(dest: str) -> dict[str, int]:
    import collections
    import io

    from shards.io.location import location
    from shards.layout.manifest import REJECTS, reason_kind

    try:
        with location(dest).open(REJECTS) as handle:  # streamed: a run may have refused millions
            lines = io.TextIOWrapper(handle, encoding="utf-8")
            reasons = collections.Counter(reason_kind(json.loads(line)["reason"]) for line in lines if line.strip())
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(
            f"{dest.rstrip('/')}/{REJECTS}: not a rejects file shards wrote ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no reason'})"
        ) from None
    return dict(reasons.most_common())


def run_preview(args: argparse.Namespace) -> int:
    from shards.dataset import open_shards
    from shards.io.fileio import check_output, temporary_path
    from shards.read.preview import choose_samples, render_contact_sheet

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if not args.output.lower().endswith(".png"):
        raise ConfigError(f"-o must name a .png file, got {args.output!r}")
    check_output(args.output, "-o", overwrite=args.overwrite)
    dataset = open_shards(args.dest)
    indices = choose_samples(dataset, args.n, per_class=args.per_class, seed=args.seed)
    columns = args.n if args.per_class and dataset.classes else None
    sheet = render_contact_sheet(dataset, indices, columns=columns)
    with temporary_path(args.output) as temp:
        sheet.image.save(temp, format="PNG")
    print(f"wrote {args.output}: {len(indices)} samples, {sheet.image.width}x{sheet.image.height} px")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    import dataclasses

    from shards.options import parse_bytes
    from shards.write.sizing import estimate_run

    options = options_from_arguments(args)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    memory = parse_bytes(args.memory) if args.memory else None
    estimate = estimate_run(args.src, options, batch_size=args.batch_size, memory=memory)
    if args.json:
        print(json.dumps(dataclasses.asdict(estimate), indent=1))
        return 0
    mb = 1e6
    print(f"samples      {estimate.samples:,} in {estimate.classes} class(es)")
    print(f"shards       {estimate.shards:,}{_shard_sizing(estimate.samples_per_shard, options.shard_size)}")
    print(
        f"on disk      {estimate.bytes_on_disk / mb:,.1f} MB as {options.dtype}  ("
        + ", ".join(f"{d} {b / mb:,.1f} MB" for d, b in estimate.bytes_on_disk_by_dtype.items())
        + ")"
    )
    print(
        f"batch {estimate.batch_size:<6} {estimate.host_batch_bytes / mb:,.1f} MB on the host, "
        f"{estimate.device_batch_bytes / mb:,.1f} MB on the device (float32)"
    )
    print(
        f"in memory    {estimate.bytes_in_memory / mb:,.1f} MB ({estimate.bytes_in_memory:,} bytes) for the "
        f"whole run as {options.dtype} (to_tf(cache=...), --in-memory)"
    )
    if memory is not None:
        print(
            f"largest batch in {args.memory}: {estimate.largest_batch_host:,} for the reader on the host "
            f"(prefetch 2 + 2 held), {estimate.largest_batch_device:,} as float32 input on the device"
        )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from shards.layout.verify import verify_dest

    report = verify_dest(args.dest)
    for problem in report.problems:
        print(problem)
    if report.ok:
        print(f"ok: {report.shards} shard(s), {report.samples:,} samples verified")
        return 0
    raise ShardsError(f"{args.dest}: {len(report.problems)} problem(s) found")


def _driver(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`command`, run as the driver of a listing: freed memory goes back to the kernel."""

    def run(args: argparse.Namespace) -> int:
        from shards.io.memory import release_freed_memory

        release_freed_memory()
        return command(args)

    return run


COMMANDS = {
    "preprocess": _driver(run_preprocess),
    "inspect": run_inspect,
    "verify": run_verify,
    "preview": run_preview,
    "plan": _driver(run_plan),
    "train": lambda args: _model_command("train", args),
    "predict": lambda args: _model_command("predict", args),
}


def _model_command(name: str, args: argparse.Namespace) -> int:
    from shards.model_cli import run_predict, run_train

    return run_train(args) if name == "train" else run_predict(args)


def _fail(exc: BaseException, status: int, *, verbose: bool) -> int:
    """One line on stderr; with -v, the whole traceback first (a task's remote one included)."""
    if verbose:
        import traceback

        traceback.print_exception(exc)
    print(f"shards: error: {exc}", file=sys.stderr)
    return status


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so a run stops as on Ctrl-C: tasks in flight
    are cancelled, finished shards stay for `--resume`, the embedded Ray ends with the process."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `shards` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose and args.quiet:
        print("shards: error: -v/--verbose and -q/--quiet exclude each other", file=sys.stderr)
        return EXIT_USAGE
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, SourceError) as exc:  # bad arguments and input paths, found before Ray starts
        return _fail(exc, EXIT_USAGE, verbose=args.verbose)
    except ShardsError as exc:
        return _fail(exc, EXIT_FAILURE, verbose=args.verbose)
    except Terminated:
        print("shards: terminated; rerun with --resume to continue", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("shards: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`shards inspect DEST | head`): stop quietly, and
        # keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
