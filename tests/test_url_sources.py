"""URL lists as a source, against a real HTTP server on loopback made here: every served image
is written, and every other URL (404, a stall, too large, not an image, a redirect loop, a
server asking noai) is a reject naming why; a resume fetches only the unfinished shards."""

from __future__ import annotations

import base64
import collections
import contextlib
import glob
import gzip
import http.server
import json
import os
import socket
import threading
import time
import tracemalloc

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import shards
from shards import cli
from shards.errors import SourceError
from shards.io import http as shards_http
from shards.io.http import FetchSettings, address_refusal, fetch_all, robots_refusal
from shards.sources import list_sources

STALL_SECONDS = 20  # a stalled request is answered never within a test; the server ends it after this
GZIP_INFLATED = 4 * 1024**2
GZIPPED = gzip.compress(b"\0" * GZIP_INFLATED)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the stdlib's 5 drops the connections of a task's 64 fetches at once

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.images = images
        self.requests: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.authorizations: list[str | None] = []

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
        if kind == "drip":  # every read within the timeout, the whole far past its limit
            self.send_response(200)
            self.end_headers()
            for _ in range(200):
                if self.server.stop.wait(0.3):
                    break
                try:
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                except OSError:
                    break
            return None
        if kind == "gzip":  # a few KB on the wire that inflate to GZIP_INFLATED bytes
            return self.send(200, GZIPPED, {"Content-Encoding": "gzip"})
        if kind == "loopback":  # a public-looking server sending its client to another address
            return self.send(302, b"", {"Location": f"http://127.0.0.2:{self.server.server_address[1]}/img/{name}"})
        if kind == "auth":
            self.server.authorizations.append(self.headers.get("Authorization"))
            return self.send(200, self.server.images[name]) if name in self.server.images else self.send(404, b"")
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


@pytest.fixture
def service():
    """A TCP service on loopback that is not HTTP: it answers every connection with a secret."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1)
                with contextlib.suppress(OSError):
                    connection.recv(4096)
                    connection.sendall(b"INTERNAL-SERVICE db_password=hunter2\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_fetching_gives_each_body_in_order_and_each_failure_its_reason(server, service):
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
        server.url("/drip/x.jpg"),
        f"http://127.0.0.1:{service.getsockname()[1]}/x.jpg",  # no HTTP server: a raw service's reply
    ]
    results = list(fetch_all(good + others, 2**20, FetchSettings(timeout=1, concurrency=4, allow_private=True)))
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
    assert reasons[7] == "took over 6 s in all (the whole-fetch limit)"  # not "timed out after 1 s"
    assert reasons[8] == "fetch failed (ClientResponseError)"  # a fixed phrase: none of the service's bytes
    ignoring = list(
        fetch_all(
            [server.url("/noai/005.jpg")], 2**20, FetchSettings(timeout=1, honour_robots=False, allow_private=True)
        )
    )
    assert ignoring == [server.images[names[5]]]


def test_urls_to_addresses_that_are_not_public_are_refused_by_default_and_fetched_when_allowed(server):
    port = server.server_address[1]
    spellings = [
        server.url("/img/000.jpg"),
        f"http://0x7f000001:{port}/img/000.jpg",  # another spelling of 127.0.0.1
        f"http://localhost:{port}/img/000.jpg",  # a name that resolves to it: checked after DNS
        f"http://[::1]:{port}/img/000.jpg",
    ]
    before = server.requests["/img/000.jpg"]
    refused = [str(result) for result in fetch_all(spellings, 2**20, FetchSettings(timeout=1))]
    assert refused[:3] == ["refused: 127.0.0.1 is a loopback address; --allow-private-urls allows it"] * 3
    assert refused[3] == "refused: ::1 is a loopback address; --allow-private-urls allows it"
    assert server.requests["/img/000.jpg"] == before  # nothing reached the server
    allowed = list(fetch_all(spellings[:3], 2**20, FetchSettings(timeout=1, allow_private=True)))
    assert allowed == [server.images["000.jpg"]] * 3


def test_every_kind_of_address_that_is_not_public_is_named():
    assert address_refusal("93.184.215.14") is None and address_refusal("2606:4700::1111") is None
    for address, kind in [
        ("127.0.0.1", "a loopback"),
        ("10.1.2.3", "a private"),
        ("172.16.0.9", "a private"),
        ("192.168.1.1", "a private"),
        ("fd00::1", "a private"),  # RFC 4193
        ("169.254.169.254", "a link-local"),  # the cloud metadata service
        ("fe80::1%eth0", "a link-local"),
        ("224.0.0.1", "a multicast"),
        ("240.0.0.1", "a reserved"),
        ("0.0.0.0", "an unspecified"),
        ("::", "an unspecified"),
        ("::ffff:127.0.0.1", "a loopback"),  # an IPv4-mapped IPv6 address is its IPv4 address
        ("100.64.0.1", "a non-public"),  # carrier-grade NAT
    ]:
        assert address_refusal(address) == f"refused: {address} is {kind} address; --allow-private-urls allows it"


def test_a_redirect_is_checked_at_the_address_it_goes_to(server, monkeypatch):
    """The first hop passes (127.0.0.1 taken as public here); the redirect's hop to 127.0.0.2
    is refused before any connection, not left to fail to connect."""
    checked = address_refusal
    monkeypatch.setattr(
        shards_http, "address_refusal", lambda address: None if address == "127.0.0.1" else checked(address)
    )
    results = list(
        fetch_all([server.url("/loopback/000.jpg"), server.url("/img/000.jpg")], 2**20, FetchSettings(timeout=1))
    )
    assert str(results[0]) == "refused: 127.0.0.2 is a loopback address; --allow-private-urls allows it"
    assert results[1] == server.images["000.jpg"]


@pytest.mark.parametrize("budget", [8 * 1024**2, None])
def test_the_bodies_a_task_holds_stay_within_its_byte_budget(server, budget):
    """32 gzip bodies of a few KB on the wire, each 4 MiB once inflated, read by a slow decoder:
    the budget bounds what the window holds (counted inflated): its own bytes, the body the
    decoder waits for and the one it holds, with their copies. Without one (None) it holds them
    all, which shows the measure sees it."""
    urls = [server.url(f"/gzip/{i}.bin") for i in range(32)]
    settings = FetchSettings(timeout=5, concurrency=32, allow_private=True, budget=budget or 2**40)
    tracemalloc.start()
    try:
        sizes = []
        for body in fetch_all(urls, 24 * 1024**2, settings):
            sizes.append(len(body))
            time.sleep(0.05)  # the decoder's turn: the window fills meanwhile
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == [GZIP_INFLATED] * 32  # every body whole, in order
    if budget is not None:
        assert peak < budget + 10 * GZIP_INFLATED, peak
    else:
        assert peak > 20 * GZIP_INFLATED, peak


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
    # Credentials in a URL are used to fetch it and never written: index and rejects name it redacted.
    with_credentials = [server.url(f"/auth/{names[0]}"), server.url("/auth/missing.jpg")]
    rows += [(url.replace("http://", "http://reader:hunter2@"), "class_1") for url in with_credentials]
    write_list(tmp_path / "list.csv", rows)
    dest = str(tmp_path / "out")
    summary = shards.preprocess(
        str(tmp_path / "list.csv"),
        dest,
        size=32,
        shard_size=32 * 32 * 3 * 8,
        fetch_timeout=1,
        max_input_bytes="1MiB",
        allow_private_urls=True,
    )
    assert summary.written == len(names) and summary.rejected == len(BAD) + 1, summary.reject_reasons
    rejects = [json.loads(line) for line in open(os.path.join(dest, "rejects.jsonl"))]
    by_source = {reject["source"]: reject["reason"] for reject in rejects}
    redacted = [url.replace("http://", "http://***@") for url in with_credentials]
    assert set(by_source) == {server.url(path) for path in BAD} | {redacted[1]}
    for path, reason in BAD.items():
        assert reason in by_source[server.url(path)], (path, by_source[server.url(path)])
    assert by_source[redacted[1]] == "HTTP 404"
    dataset = shards.open(dest)
    sources = sorted(dataset.columns(["source"])["source"].tolist())
    assert sources == sorted([url for url, _ in rows[: len(names) - 1]] + [redacted[0]])
    assert dataset.classes == ["class_0", "class_1", "class_2"]
    assert cli.main(["verify", dest]) == 0
    assert server.authorizations.count("Basic " + base64.b64encode(b"reader:hunter2").decode()) == 2
    for name in os.listdir(dest):  # no file of the run holds the password
        if os.path.isfile(os.path.join(dest, name)):
            assert b"hunter2" not in open(os.path.join(dest, name), "rb").read(), name


def test_a_resumed_url_run_fetches_only_the_shards_it_lacks(ray_cluster, server, tmp_path):
    names = sorted(server.images)
    write_list(tmp_path / "list.csv", [(server.url(f"/img/{name}"), "a") for name in names])
    dest = str(tmp_path / "out")
    options = {"size": 16, "shard_size": 16 * 16 * 3 * 6, "fetch_timeout": 2, "allow_private_urls": True}
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
