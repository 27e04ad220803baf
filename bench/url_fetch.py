"""`python -m bench urls`: a URL list fetched with network latency against the same images read
from local files, in one run.

An aiohttp server in a process of its own serves the corpus on loopback and waits `--latency`
(default 50 ms) before each answer, as a distant server would; a second one answers at once.
shards preprocesses the corpus three times at default options: from its folder, from a CSV list
of the same images' URLs on the prompt server, and from one on the slow server (each shard task
keeps 64 fetches in flight). The rows are the steady rate (shards' own figure, Ray's start left
out) and the whole-process rate, interleaved rounds, median of each. Two ratios split the gap
to local files: the prompt server against local files is what HTTP costs in CPU (the client's
parsing in the task, and the server's, which shares the machine's cores, as a server on the
internet would not: its share of the CPU is printed); the slow server against the prompt one
is what the latency costs once that CPU is paid, which the window of fetches in flight hides
but for its fill: each shard task opens its window anew and waits one latency for its first
image. The default 20,000 images make shards of 313 (auto), as a run of that size has; at 2,000
they are 32 images, and that wait was a third of each shard's time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import os
import socket
import statistics
import subprocess
import sys
import time

from bench.corpus import cpu_device_line, ensure_corpus, jpeg_paths


def serve(root: str, port: str, latency: str) -> None:
    """The server process: GET /<relative path> answers with the file after `latency` seconds."""
    from aiohttp import web

    delay = float(latency)
    folder = os.path.realpath(root)

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        path = os.path.realpath(os.path.join(folder, request.match_info["path"]))
        if not path.startswith(folder + os.sep) or not os.path.isfile(path):
            return web.Response(status=404)
        with open(path, "rb") as handle:
            return web.Response(body=handle.read(), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{path:.+}", handle)
    web.run_app(app, host="127.0.0.1", port=int(port), print=None, access_log=None, backlog=1024)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_url_list(root: str, paths: list[str], port: int, out: str) -> None:
    """A CSV of `url,label` for the corpus's files on the server at `port`."""
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "label"])
        for path in paths:
            relative = os.path.relpath(path, root)
            writer.writerow([f"http://127.0.0.1:{port}/{relative}", relative.split(os.sep)[0]])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shards_run(src: str, dest: str) -> dict:
    """One `python -m bench.peers shards` process (default options but --size 224), its result."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.peers", "shards", src, dest, "default"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def start_server(corpus: str, latency: float) -> tuple[subprocess.Popen, int]:
    """A server process for the corpus on a free loopback port, once it accepts connections."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.url_fetch", "serve", corpus, str(port), str(latency)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, port
        time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the bench's HTTP server did not listen on port {port} within 30 s")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench urls", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="ImageNet-sized JPEGs (default 20,000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each answer (default 0.05)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", default="/tmp/shards-bench")
    args = parser.parse_args(argv)
    print(cpu_device_line())
    corpus = ensure_corpus(os.path.join(args.work, f"imagenet-{args.images}"), args.images, sizes=(300, 640))
    paths = jpeg_paths(corpus)
    servers: dict[str, subprocess.Popen] = {}
    results: dict[str, list[dict]] = collections.defaultdict(list)
    shares: dict[str, list[float]] = collections.defaultdict(list)
    try:
        lists = {}
        for name, latency in (("prompt", 0.0), ("slow", args.latency)):
            servers[name], port = start_server(corpus, latency)
            lists[name] = os.path.join(args.work, f"urls-{args.images}-{name}.csv")
            write_url_list(corpus, paths, port, lists[name])
        for _ in range(args.rounds):
            results["local"].append(shards_run(corpus, os.path.join(args.work, "urls-bench-local")))
            for name, url_list in lists.items():
                used, begun = cpu_seconds(servers[name].pid), time.perf_counter()
                results[name].append(shards_run(url_list, os.path.join(args.work, "urls-bench-remote")))
                spent = cpu_seconds(servers[name].pid) - used
                shares[name].append(spent / ((time.perf_counter() - begun) * (os.cpu_count() or 1)))
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=30)

    def steady(name: str) -> float:
        return statistics.median(result["steady_images_per_second"] for result in results[name])

    def whole(name: str) -> float:
        return statistics.median(result["images"] / result["seconds"] for result in results[name])

    ms = f"{args.latency * 1000:.0f} ms"
    print(f"{len(paths)} images, {args.rounds} rounds (medians)")
    print("| source | steady img/s | whole-process img/s | server's share of the CPU |")
    print("|---|---|---|---|")
    print(f"| local files | {steady('local'):,.0f} | {whole('local'):,.0f} | |")
    for name, label in (("prompt", "URL list, server answers at once"), ("slow", f"URL list, server waits {ms}")):
        share = statistics.median(shares[name])
        print(f"| {label} | {steady(name):,.0f} | {whole(name):,.0f} | {share:.0%} |")
    for name, base, what in (
        ("slow", "local", f"URL list ({ms}) / local files"),
        ("prompt", "local", "HTTP's CPU: prompt server / local files"),
        ("slow", "prompt", f"latency: {ms} / prompt server"),
    ):
        print(f"{what}: steady {steady(name) / steady(base):.2f}x, whole process {whole(name) / whole(base):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
