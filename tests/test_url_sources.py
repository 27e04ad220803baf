"""URL lists as a source, against a real HTTP server on loopback made here: every served image
is written, and every other URL (404, a stall, too large, not an image, a redirect loop, a
server asking noai) is a reject naming why; a resume fetches only the unfinished shards."""

from __future__ import annotations

import collections
import glob
import http.server
import json
import os
import threading
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import shards
from shards import cli
from shards.errors import SourceError
from shards.io.http import FetchSettings, fetch_all, robots_refusal
from shards.sources import list_sources

STALL_SECONDS = 20  # a stalled request is answered never within a test; the server ends it after this


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the stdlib's 5 drops the connections of a task's 64 fetches at once

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.images = images
        self.requests: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests[self.path] += 1
            seen = self.server.requests[self.path]
        kind, _, name = self.path.strip("/").partition("/")
        if kind == "img" and name in self.server.images:
            return self.send(200, self.server.images[name])
        if kind == "noai" and name in self.server.images:
            return self.send(200, self.server.images[name], {"X-Robots-Tag": "noai"})
        if kind == "otherbot" and name in self.server.images:
            return self.send(200, self.server.images[name], {"X-Robots-Tag": "otherbot: noai"})
        if kind == "redirect":
            return self.send(302, b"", {"Location": f"/img/{name}"})
        if kind == "loop":
            return self.send(302, b"", {"Location": "/loop/again"})
        if kind == "flaky" and name in self.server.images:
            return self.send(503, b"busy") if seen == 1 else self.send(200, self.server.images[name])
        if kind == "slow" and name in self.server.images:  # every read well within the timeout
            data = self.server.images[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for start in range(0, len(data), max(1, len(data) // 4)):
                time.sleep(0.05)
                self.wfile.write(data[start : start + max(1, len(data) // 4)])
            return None
        if kind == "stall":
            self.server.stop.wait(STALL_SECONDS)
            return None
        if kind == "big":  # says how big it is
            self.send_response(200)
            self.send_header("Content-Length", str(64 * 1024**2))
            self.end_headers()
            return None
        if kind == "endless":  # does not say, and never ends
            self.send_response(200)
            self.end_headers()
            chunk = b"\0" * 65536
            for _ in range(1024):
                if self.server.stop.is_set():
                    break
                try:
                    self.wfile.write(chunk)
                except OSError:
                    break
            return None
        if kind == "text":
            return self.send(200, b"hello, not an image", {"Content-Type": "text/plain"})
        return self.send(404, b"no such thing")

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(photos):
    files = sorted(glob.glob(os.path.join(photos, "*", "*.jpg")))[:24]
    images = {f"{i:03d}.jpg": open(path, "rb").read() for i, path in enumerate(files)}
    running = Server(images)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.stop.set()
    running.shutdown()
    running.server_close()


BAD = {
    "/missing/a.jpg": "HTTP 404",
    "/stall/b.jpg": "timed out after 1 s",
    "/big/c.jpg": "over the --max-input-bytes limit",
    "/endless/d.jpg": "over the --max-input-bytes limit of 1,048,576 (cut while downloading)",
    "/text/e.jpg": "not an image",
    "/loop/f.jpg": "more than 5 redirects",
    "/noai/000.jpg": "X-Robots-Tag: noai",
}


def test_fetching_gives_each_body_in_order_and_each_failure_its_reason(server):
    good = [server.url(f"/img/{name}") for name in sorted(server.images)[:6]]
    others = [
        server.url("/redirect/001.jpg"),
        server.url("/slow/002.jpg"),
        server.url("/flaky/003.jpg"),
        server.url("/otherbot/004.jpg"),  # a directive for another agent is not ours
        server.url("/missing/x.jpg"),
        server.url("/stall/x.jpg"),
        server.url("/big/x.jpg"),
        server.url("/endless/x.jpg"),
        server.url("/loop/x.jpg"),
        server.url("/noai/005.jpg"),
        "http://127.0.0.1:9/refused.jpg",  # nothing listens on the discard port
    ]
    results = list(fetch_all(good + others, 2**20, FetchSettings(timeout=1, concurrency=4)))
    names = sorted(server.images)
    assert results[:6] == [server.images[name] for name in names[:6]]
    assert results[6:10] == [server.images[names[i]] for i in (1, 2, 3, 4)]
    assert server.requests["/flaky/003.jpg"] == 2  # the 503 was retried
    reasons = [str(result) for result in results[10:]]
    assert reasons[0] == "HTTP 404"
    assert reasons[1] == "timed out after 1 s"
    assert reasons[2] == "67,108,864 bytes, over the --max-input-bytes limit of 1,048,576"
    assert reasons[3] == "over the --max-input-bytes limit of 1,048,576 (cut while downloading)"
    assert reasons[4] == "more than 5 redirects"
    assert reasons[5].startswith("X-Robots-Tag: noai (the server asks not to")
    assert reasons[6].startswith("cannot connect")
    ignoring = list(fetch_all([server.url("/noai/005.jpg")], 2**20, FetchSettings(timeout=1, honour_robots=False)))
    assert ignoring == [server.images[names[5]]]


def test_robots_directives_apply_to_every_agent_or_to_shards_only():
    assert robots_refusal(["noai"]) == "noai"
    assert robots_refusal(["index, follow", "NoImageAI"]) == "noimageai"
    assert robots_refusal(["otherbot: noai"]) is None
    assert robots_refusal(["imageshards: noindex"]) == "noindex"
    assert robots_refusal(["index, follow"]) is None


def write_list(path, rows):
    pacsv.write_csv(pa.table({"url": [url for url, _ in rows], "label": [label for _, label in rows]}), path)


def test_a_list_with_a_scheme_other_than_http_is_refused_in_one_line_before_any_work(tmp_path):
    write_list(tmp_path / "list.csv", [("http://example.invalid/a.jpg", "a"), ("file:///etc/passwd", "b")])
    with pytest.raises(
        SourceError, match=r"1 row\(s\) of 'url' are not http:// or https:// URLs, such as 'file:///etc/passwd'"
    ):
        list_sources(str(tmp_path / "list.csv"))
    with pytest.raises(SourceError, match="no URL column 'link'"):
        list_sources(str(tmp_path / "list.csv"), url_column="link")


def test_a_url_list_run_writes_every_served_image_and_rejects_the_rest_with_reasons(ray_cluster, server, tmp_path):
    names = sorted(server.images)
    rows = [(server.url(f"/img/{name}"), f"class_{i % 3}") for i, name in enumerate(names[1:])]
    rows += [(server.url(path), "class_0") for path in BAD]
    write_list(tmp_path / "list.csv", rows)
    dest = str(tmp_path / "out")
    summary = shards.preprocess(
        str(tmp_path / "list.csv"), dest, size=32, shard_size=32 * 32 * 3 * 8, fetch_timeout=1, max_input_bytes="1MiB"
    )
    assert summary.written == len(names) - 1 and summary.rejected == len(BAD), summary.reject_reasons
    rejects = [json.loads(line) for line in open(os.path.join(dest, "rejects.jsonl"))]
    by_source = {reject["source"]: reject["reason"] for reject in rejects}
    assert set(by_source) == {server.url(path) for path in BAD}
    for path, reason in BAD.items():
        assert reason in by_source[server.url(path)], (path, by_source[server.url(path)])
    dataset = shards.open(dest)
    sources = sorted(dataset.columns(["source"])["source"].tolist())
    assert sources == sorted(url for url, _ in rows[: len(names) - 1])
    assert dataset.classes == ["class_0", "class_1", "class_2"]
    assert cli.main(["verify", dest]) == 0


def test_a_resumed_url_run_fetches_only_the_shards_it_lacks(ray_cluster, server, tmp_path):
    names = sorted(server.images)
    write_list(tmp_path / "list.csv", [(server.url(f"/img/{name}"), "a") for name in names])
    dest = str(tmp_path / "out")
    options = {"size": 16, "shard_size": 16 * 16 * 3 * 6, "fetch_timeout": 2}
    shards.preprocess(str(tmp_path / "list.csv"), dest, **options)
    manifest = json.load(open(os.path.join(dest, "manifest.json")))
    lost = manifest["shards"][1]["name"]
    for name in os.listdir(dest):
        if name.startswith(lost):
            os.remove(os.path.join(dest, name))
    os.remove(os.path.join(dest, "manifest.json"))  # as a run cut before its commit leaves it
    before = collections.Counter(server.requests)
    summary = shards.preprocess(str(tmp_path / "list.csv"), dest, mode="resume", **options)
    fetched = {path for path, count in server.requests.items() if count > before[path]}
    assert summary.resumed_shards == len(manifest["shards"]) - 1
    assert len(fetched) == manifest["shards"][1]["count"] > 0
    assert len(shards.open(dest)) == len(names) and cli.main(["verify", dest]) == 0
