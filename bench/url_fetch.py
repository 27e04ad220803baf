"""`python -m bench urls`: a URL list fetched with network latency against the same images read
from local files, in one run.

An aiohttp server in a process of its own serves the corpus on loopback and waits `--latency`
(default 50 ms) before each answer, as a distant server would. shards preprocesses the corpus
twice at default options: from its folder, and from a CSV list of the same images' URLs (each
shard task keeps 64 fetches in flight). The rows are the steady rate (shards' own figure, Ray's
start left out) and the whole-process rate; the ratio is URL over local, interleaved rounds,
median of each. The URL runs share the machine's cores with the server, which a node fetching
from the internet would not: the server's share of the CPU is printed beside the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
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


def write_url_list(root: str, port: int, out: str) -> int:
    paths = jpeg_paths(root)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "label"])
        for path in paths:
            relative = os.path.relpath(path, root)
            writer.writerow([f"http://127.0.0.1:{port}/{relative}", relative.split(os.sep)[0]])
    return len(paths)


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


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench urls", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="ImageNet-sized JPEGs (default 2000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each answer (default 0.05)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", default="/tmp/shards-bench")
    args = parser.parse_args(argv)
    print(cpu_device_line())
    corpus = ensure_corpus(os.path.join(args.work, f"imagenet-{args.images}"), args.images, sizes=(300, 640))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.url_fetch", "serve", corpus, str(port), str(args.latency)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url_list = os.path.join(args.work, f"urls-{args.images}.csv")
        count = write_url_list(corpus, port, url_list)
        local, remote, server_share = [], [], []
        for _ in range(args.rounds):
            local.append(shards_run(corpus, os.path.join(args.work, "urls-bench-local")))
            used, begun = cpu_seconds(server.pid), time.perf_counter()
            remote.append(shards_run(url_list, os.path.join(args.work, "urls-bench-remote")))
            spent = cpu_seconds(server.pid) - used
            server_share.append(spent / ((time.perf_counter() - begun) * (os.cpu_count() or 1)))
    finally:
        server.terminate()
        server.wait(timeout=30)

    def median(results: list[dict], key: str) -> float:
        return statistics.median(result[key] for result in results)

    def whole(results: list[dict]) -> float:
        return statistics.median(result["images"] / result["seconds"] for result in results)

    print(f"{count} images, {args.latency * 1000:.0f} ms before each answer, {args.rounds} rounds (medians)")
    print("| source | steady img/s | whole-process img/s |")
    print("|---|---|---|")
    print(f"| local files | {median(local, 'steady_images_per_second'):,.0f} | {whole(local):,.0f} |")
    print(f"| URL list | {median(remote, 'steady_images_per_second'):,.0f} | {whole(remote):,.0f} |")
    steady = median(remote, "steady_images_per_second") / median(local, "steady_images_per_second")
    print(f"URL list / local files: steady {steady:.2f}x, whole process {whole(remote) / whole(local):.2f}x")
    print(
        f"the loopback server itself took {statistics.median(server_share):.0%} of the machine's CPU during the "
        "URL runs (a remote server would not)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
