"""Fetching http(s) URLs for a shard task: many at once, each bounded in time and size.

A 2-core node decoding images would sit idle on network latency if it fetched one URL at a
time, so a task keeps up to `concurrency` requests in flight on one aiohttp event loop (on a
helper thread) and hands the bodies back in listing order as the decoder asks for them. Nothing
here is unbounded:

- connecting and each read wait at most `timeout` seconds, and a whole fetch at most
  `TOTAL_TIMEOUTS` times that (a server that drips one byte a second is cut too);
- a body is refused from its Content-Length, and cut one byte past `max_bytes` while streaming
  (counted as decompressed: a gzip body is cut by what it becomes, not what travels);
- the bodies a task holds at once, downloaded or downloading, stay within `FetchSettings.budget`:
  the window of requests shrinks when bodies are large (128 gzip URLs that each inflate to 24 MiB
  took a worker to 1.4 GiB with the window alone as the bound);
- redirects are followed up to `MAX_REDIRECTS`;
- 429 and 5xx answers and dropped connections are retried `ATTEMPTS - 1` times with backoff
  (a `Retry-After` of up to `MAX_RETRY_AFTER` seconds is honoured).

Every failure is a `DecodeError` whose text names it (`HTTP 404`, `timed out after 10 s`, ...):
the input becomes a reject with that reason, and the run goes on. A reason is a status code or
a fixed phrase, never text the server sent (a raw TCP service's reply would land in
rejects.jsonl).

A URL list may come from anywhere, and its tasks run inside the cluster: by default no request
goes to an address that is not public (loopback, private, link-local such as the cloud metadata
service at 169.254.169.254, multicast, reserved, unspecified). The check is made on the
addresses the connector is about to connect to, after DNS and at every redirect hop, so neither
another spelling of an address (`0x7f000001`) nor a name that resolves to one (DNS rebinding)
slips past; `FetchSettings.allow_private` (`--allow-private-urls`) turns it off. Servers that ask through
`X-Robots-Tag` that their images not be used for AI training (`noai`, `noimageai`) or indexed
(`noindex`, `noimageindex`) are honoured unless the run says otherwise, as img2dataset does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import itertools
import threading
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from shards.errors import DecodeError
from shards.io.source import too_large
from shards.version import DISTRIBUTION, __version__

SCHEMES = ("http://", "https://")
CONCURRENCY = 64
ATTEMPTS = 3
BACKOFF = 0.5  # seconds before the first retry; doubled for each further one
MAX_RETRY_AFTER = 10.0
MAX_REDIRECTS = 5
TOTAL_TIMEOUTS = 6
CHUNK = 1 << 16
#: The bytes of bodies a shard task's fetches hold at once (see `_ByteBudget`).
FETCH_BUDGET = 256 * 1024**2
ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
USER_AGENT = f"{DISTRIBUTION}/{__version__} (image dataset preprocessing; honours X-Robots-Tag noai)"
ROBOTS_AGENTS = frozenset({"*", DISTRIBUTION, "shards"})


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """How a run fetches its URLs.

    Attributes:
        timeout: seconds to connect, and then for each read.
        honour_robots: refuse an image whose response says `X-Robots-Tag: noai` (and the like).
        concurrency: requests in flight per shard task.
        allow_private: fetch from addresses that are not public (loopback, private,
            link-local...), which are refused by default.
        budget: the bytes of bodies the fetches hold at once; the one the decoder needs next
            may go past it (up to the run's `max_input_bytes`), the others wait for room.
    """

    timeout: float = 10.0
    honour_robots: bool = True
    concurrency: int = CONCURRENCY
    allow_private: bool = False
    budget: int = FETCH_BUDGET


class _Retry(Exception):
    """A failure worth another attempt (429, 5xx, a dropped connection)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class _ByteBudget:
    """The bytes a task's fetches hold: bodies downloaded and not yet handed to the decoder,
    and those being downloaded. A fetch takes room for each chunk before it keeps it, and waits
    while there is none, except the fetch whose body the decoder needs next (the head), which
    always goes on: the window shrinks when bodies are large, and never deadlocks. Room comes
    back when the decoder takes a body, or when a fetch fails."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self.head = limit, 0, 0
        self._room = asyncio.Condition()

    async def take(self, order: int, size: int) -> float:
        """Room for `size` more bytes of the fetch at `order`; returns the seconds it waited."""
        started = asyncio.get_running_loop().time()
        async with self._room:
            await self._room.wait_for(lambda: order <= self.head or self.held + size <= self.limit)
            self.held += size
        return asyncio.get_running_loop().time() - started

    async def give(self, size: int, head: int | None = None) -> None:
        """`size` bytes back; with `head`, the decoder now waits for the fetch at that order."""
        async with self._room:
            self.held -= size
            self.head = max(self.head, head or 0)
            self._room.notify_all()


def fetch_all(urls: Sequence[str], max_bytes: int, settings: FetchSettings) -> Iterator[bytes | DecodeError]:
    """Each URL's body (or why not), in order, with up to `settings.concurrency` in flight.

    The fetches run on an event loop on a helper thread, a window of `concurrency` results
    ahead of the consumer, whose bodies stay within `settings.budget` bytes. Stopping the
    iteration early cancels what is still in flight.
    """
    if not urls:
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="shards-fetch", daemon=True)
    thread.start()
    session = asyncio.run_coroutine_threadsafe(_open_session(settings), loop).result()
    budget = asyncio.run_coroutine_threadsafe(_new_budget(settings.budget), loop).result()

    def submit(order: int, url: str) -> Any:
        return asyncio.run_coroutine_threadsafe(_fetch(session, url, max_bytes, settings, budget, order), loop)

    pending = enumerate(urls)
    window = collections.deque(submit(*item) for item in itertools.islice(pending, settings.concurrency))
    try:
        for order in itertools.count():
            if not window:
                break
            result = window.popleft().result()
            held = len(result) if isinstance(result, bytes) else 0
            asyncio.run_coroutine_threadsafe(budget.give(held, head=order + 1), loop)
            window.extend(submit(*item) for item in itertools.islice(pending, 1))
            yield result
    finally:
        for future in window:
            future.cancel()
        asyncio.run_coroutine_threadsafe(session.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _new_budget(limit: int) -> _ByteBudget:
    return _ByteBudget(limit)  # made on the loop that uses it


async def _open_session(settings: FetchSettings) -> Any:
    import aiohttp

    # The whole-fetch limit is kept by `_get`, which leaves out the time spent waiting for the
    # byte budget (aiohttp's `total` would count it, and cut a healthy download as too slow).
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.timeout, sock_read=settings.timeout)
    kind = aiohttp.TCPConnector if settings.allow_private else _public_connector()
    connector = kind(limit=settings.concurrency, limit_per_host=settings.concurrency)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        auto_decompress=False,  # `_inflater`: within the byte budget
    )


def address_refusal(address: str) -> str | None:
    """Why a fetch may not connect to `address` (an IP address as the resolver gives it), or
    None for a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone (fe80::1%eth0) names no address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    kinds = (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a reserved", ip.is_reserved),
        ("a private", ip.is_private),
        ("a non-public", not ip.is_global),
    )
    kind = next((name for name, matches in kinds if matches), None)
    return None if kind is None else f"refused: {address} is {kind} address; --allow-private-urls allows it"


_PUBLIC_CONNECTOR: Any = None


def _public_connector() -> Any:
    """aiohttp's TCPConnector that connects to public addresses only (made once, on first use,
    so importing this module does not import aiohttp)."""
    global _PUBLIC_CONNECTOR
    if _PUBLIC_CONNECTOR is None:
        import aiohttp

        class PublicConnector(aiohttp.TCPConnector):
            """Every host's addresses, literal or resolved, pass `address_refusal` before a
            connection is made: the connector connects only to the addresses returned here."""

            async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
                found = await super()._resolve_host(host, port, traces=traces)
                public = [entry for entry in found if address_refusal(entry["host"]) is None]
                if not public:
                    raise DecodeError(address_refusal(found[0]["host"]) or "refused: no public address")
                return public

        _PUBLIC_CONNECTOR = PublicConnector
    return _PUBLIC_CONNECTOR


async def _fetch(
    session: Any, url: str, max_bytes: int, settings: FetchSettings, budget: _ByteBudget, order: int
) -> bytes | DecodeError:
    """One URL's body, retried where that can help; the failure as a DecodeError otherwise."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await _get(session, url, max_bytes, settings, budget, order)
        except DecodeError as exc:
            return exc
        except _Retry as exc:
            if attempt == ATTEMPTS:
                return DecodeError(f"{exc} (after {ATTEMPTS} attempts)")
            wait = exc.wait if exc.wait is not None else BACKOFF * 2 ** (attempt - 1)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def _get(
    session: Any, url: str, max_bytes: int, settings: FetchSettings, budget: _ByteBudget, order: int
) -> bytes:
    """One attempt at `url`'s body, its bytes taken from `budget` as they come (and given back
    if the attempt fails; the consumer gives them back once it has the body)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    limit = settings.timeout * TOTAL_TIMEOUTS
    started, waited, taken = loop.time(), 0.0, 0
    try:
        request = session.get(url, allow_redirects=True, max_redirects=MAX_REDIRECTS)
        async with await asyncio.wait_for(request, limit) as response:
            if response.status == 429 or response.status >= 500:
                raise _Retry(f"HTTP {response.status}", _retry_after(response.headers.get("Retry-After")))
            if response.status >= 400:
                raise DecodeError(f"HTTP {response.status}")
            if settings.honour_robots:
                refused = robots_refusal(response.headers.getall("X-Robots-Tag", []))
                if refused:
                    raise DecodeError(f"X-Robots-Tag: {refused} (the server asks not to; --ignore-robots-headers)")
            if response.content_length is not None and response.content_length > max_bytes:
                raise DecodeError(too_large(response.content_length, max_bytes))
            inflater = _inflater(response.headers.get("Content-Encoding"))
            body = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                for piece in _inflated(inflater, chunk):
                    if len(body) + len(piece) > max_bytes:
                        raise DecodeError(f"over the --max-input-bytes limit of {max_bytes:,} (cut while downloading)")
                    waited += await budget.take(order, len(piece))
                    taken += len(piece)
                    body += piece
                if loop.time() - started - waited > limit:
                    raise asyncio.TimeoutError
            if inflater is not None and not inflater.eof:
                raise DecodeError("truncated compressed body")
            taken = 0  # the body's bytes are the consumer's to give back
            return bytes(body)
    except (DecodeError, _Retry):
        raise
    except aiohttp.TooManyRedirects:
        raise DecodeError(f"more than {MAX_REDIRECTS} redirects") from None
    except (aiohttp.InvalidURL, ValueError):  # the text may quote a redirect's Location: the server's bytes
        raise DecodeError("not a URL shards can fetch") from None
    except aiohttp.ServerTimeoutError:  # a connect or one read waited too long
        raise DecodeError(f"timed out after {settings.timeout:g} s") from None
    except asyncio.TimeoutError:  # the whole fetch's limit: a server that drips its body
        raise DecodeError(f"took over {settings.timeout * TOTAL_TIMEOUTS:g} s in all (the whole-fetch limit)") from None
    except aiohttp.ClientConnectorError as exc:  # before ClientOSError, which it is a kind of
        raise DecodeError(f"cannot connect ({exc.os_error.strerror or exc.os_error})") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
        raise _Retry(f"connection lost ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:  # the class only: aiohttp's text quotes what the server sent
        raise DecodeError(f"fetch failed ({type(exc).__name__})") from None
    finally:
        if taken:
            await budget.give(taken)


def _inflater(encoding: str | None) -> Any:
    """A decompressor for a body's Content-Encoding, or None for a body sent as it is.

    Bodies are inflated here, a chunk at a time within the byte budget, not by aiohttp, which
    inflates each response as it arrives: a gzip body of a few KB on the wire would take its
    whole inflated size in the connection's buffer whatever the reader asked for.

    Raises:
        DecodeError: an encoding shards does not decode (in a fixed phrase: the header's text
            is the server's).
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    raise DecodeError("a Content-Encoding shards does not decode")


def _inflated(inflater: Any, chunk: bytes) -> Iterator[bytes]:
    """What `chunk` of a body becomes, CHUNK bytes at most at a time."""
    if inflater is None:
        yield chunk
        return
    data = chunk
    try:
        while data:
            piece = inflater.decompress(data, CHUNK)
            data = inflater.unconsumed_tail
            if piece:
                yield piece
    except zlib.error:
        raise DecodeError("corrupt compressed body") from None


def robots_refusal(values: Sequence[str]) -> str | None:
    """The X-Robots-Tag directive that refuses this use, or None.

    A value is a comma-separated list of directives, each optionally for one user agent
    (`otherbot: noai`); only those for every agent or for this one count.
    """
    for value in values:
        agent = "*"
        for part in value.split(","):
            token = part.strip().lower()
            if ":" in token:
                head, _, token = token.partition(":")
                agent, token = head.strip(), token.strip()
            if agent in ROBOTS_AGENTS and token in ROBOTS_DIRECTIVES:
                return token
    return None


def _retry_after(value: str | None) -> float | None:
    """A Retry-After of seconds, capped; None for a date or nothing (the backoff applies)."""
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None
