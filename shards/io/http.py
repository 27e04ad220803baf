"""Fetching http(s) URLs for a shard task: many at once, each bounded in time and size.

A 2-core node decoding images would sit idle on network latency if it fetched one URL at a
time, so a task keeps up to `concurrency` requests in flight on one aiohttp event loop (on a
helper thread) and hands the bodies back in listing order as the decoder asks for them. Nothing
here is unbounded:

- connecting and each read wait at most `timeout` seconds, and a whole fetch at most
  `TOTAL_TIMEOUTS` times that (a server that drips one byte a second is cut too);
- a body is refused from its Content-Length, and cut one byte past `max_bytes` while streaming;
- redirects are followed up to `MAX_REDIRECTS`;
- 429 and 5xx answers and dropped connections are retried `ATTEMPTS - 1` times with backoff
  (a `Retry-After` of up to `MAX_RETRY_AFTER` seconds is honoured).

Every failure is a `DecodeError` whose text names it (`HTTP 404`, `timed out after 10 s`, ...):
the input becomes a reject with that reason, and the run goes on. Servers that ask through
`X-Robots-Tag` that their images not be used for AI training (`noai`, `noimageai`) or indexed
(`noindex`, `noimageindex`) are honoured unless the run says otherwise, as img2dataset does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import threading
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
    """

    timeout: float = 10.0
    honour_robots: bool = True
    concurrency: int = CONCURRENCY


class _Retry(Exception):
    """A failure worth another attempt (429, 5xx, a dropped connection)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def fetch_all(urls: Sequence[str], max_bytes: int, settings: FetchSettings) -> Iterator[bytes | DecodeError]:
    """Each URL's body (or why not), in order, with up to `settings.concurrency` in flight.

    The fetches run on an event loop on a helper thread; a window of `concurrency` results
    ahead of the consumer bounds memory to that many bodies. Stopping the iteration early
    cancels what is still in flight.
    """
    if not urls:
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="shards-fetch", daemon=True)
    thread.start()
    session = asyncio.run_coroutine_threadsafe(_open_session(settings), loop).result()

    def submit(url: str) -> Any:
        return asyncio.run_coroutine_threadsafe(_fetch(session, url, max_bytes, settings), loop)

    pending = iter(urls)
    window = collections.deque(submit(url) for url in itertools.islice(pending, settings.concurrency))
    try:
        while window:
            result = window.popleft().result()
            window.extend(submit(url) for url in itertools.islice(pending, 1))
            yield result
    finally:
        for future in window:
            future.cancel()
        asyncio.run_coroutine_threadsafe(session.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _open_session(settings: FetchSettings) -> Any:
    import aiohttp

    timeout = aiohttp.ClientTimeout(
        total=settings.timeout * TOTAL_TIMEOUTS, sock_connect=settings.timeout, sock_read=settings.timeout
    )
    connector = aiohttp.TCPConnector(limit=settings.concurrency, limit_per_host=settings.concurrency)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, headers={"User-Agent": USER_AGENT})


async def _fetch(session: Any, url: str, max_bytes: int, settings: FetchSettings) -> bytes | DecodeError:
    """One URL's body, retried where that can help; the failure as a DecodeError otherwise."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await _get(session, url, max_bytes, settings)
        except DecodeError as exc:
            return exc
        except _Retry as exc:
            if attempt == ATTEMPTS:
                return DecodeError(f"{exc} (after {ATTEMPTS} attempts)")
            wait = exc.wait if exc.wait is not None else BACKOFF * 2 ** (attempt - 1)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def _get(session: Any, url: str, max_bytes: int, settings: FetchSettings) -> bytes:
    import aiohttp

    try:
        async with session.get(url, allow_redirects=True, max_redirects=MAX_REDIRECTS) as response:
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
            body = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise DecodeError(f"over the --max-input-bytes limit of {max_bytes:,} (cut while downloading)")
            return bytes(body)
    except (DecodeError, _Retry):
        raise
    except aiohttp.TooManyRedirects:
        raise DecodeError(f"more than {MAX_REDIRECTS} redirects") from None
    except (aiohttp.InvalidURL, ValueError) as exc:
        raise DecodeError(f"not a URL shards can fetch ({exc})") from None
    except asyncio.TimeoutError:
        raise DecodeError(f"timed out after {settings.timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:  # before ClientOSError, which it is a kind of
        raise DecodeError(f"cannot connect ({exc.os_error.strerror or exc.os_error})") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
        raise _Retry(f"connection lost ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        raise DecodeError(
            f"fetch failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


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
