"""Object storage (s3://, gs://) through pyarrow's filesystems: listing and reading inputs.

The endpoint and credentials come from the standard environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or GCS's own), which the driver
hands to its Ray tasks through `runtime_env`, so every worker reaches the same store.
Remote I/O, and only remote I/O, is retried.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

if TYPE_CHECKING:  # pyarrow is imported where it is used: a task writing local files never needs it
    import pyarrow as pa
    import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

SCHEMES = ("s3://", "gs://", "gcs://")
ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
ATTEMPTS = 3
T = TypeVar("T")


@contextlib.contextmanager
def endpoint(url: str | None) -> Iterator[None]:
    """Use `url` as the S3-compatible endpoint inside the block, then restore AWS_ENDPOINT_URL.

    `--endpoint-url` is one command's setting: it reaches pyarrow, boto3 and the Ray tasks the
    command starts (through `environment()`), and leaves the process as it found it, so a
    library caller running `cli.main` twice, or a test, does not inherit it.
    """
    if url is None:
        yield
        return
    before = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = before


def is_remote(uri: str) -> bool:
    """True for object-storage URIs (s3://, gs://)."""
    return uri.startswith(SCHEMES)


def any_remote(uris: pa.Array | pa.ChunkedArray) -> bool:
    """True when any of many URIs is in object storage (vectorised over the Arrow listing)."""
    import pyarrow.compute as pc

    return bool(pc.any(pc.match_substring_regex(uris, r"^(s3|gs|gcs)://")).as_py())


@functools.lru_cache(maxsize=16)
def _filesystem(scheme_and_bucket: str, endpoint: str | None) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(scheme_and_bucket)[0]


# A forked child (a DataLoader worker) must not use its parent's S3 clients: their kept-alive
# connections are the parent's sockets, and two processes reading replies from one socket got
# each other's bytes (a shard downloaded whole, of the right size, with a wrong checksum).
os.register_at_fork(after_in_child=_filesystem.cache_clear)


def resolve(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `uri` and the path within it (`bucket/key`), at `endpoint` (default:
    AWS_ENDPOINT_URL); one per process, made again in a forked child."""
    scheme, _, rest = uri.partition("://")
    bucket = rest.split("/", 1)[0]
    where = endpoint if endpoint is not None else os.environ.get("AWS_ENDPOINT_URL")
    return _filesystem(f"{scheme}://{bucket}", where), rest.rstrip("/")


def join(uri: str, relative: str) -> str:
    return uri.rstrip("/") + "/" + relative.lstrip("/")


def retried(action: Callable[[], T], what: str) -> T:
    """Run a remote call, retrying transient failures (not missing objects) with backoff."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if attempt == ATTEMPTS:
                raise
            logger.warning("%s failed (%s); retry %d of %d", what, exc, attempt, ATTEMPTS - 1)
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def read_bytes(uri: str) -> bytes:
    filesystem, path = resolve(uri)

    def read() -> bytes:
        with filesystem.open_input_file(path) as handle:
            return handle.readall()

    return retried(read, f"reading {uri}")


def info(uri: str) -> pafs.FileInfo:
    filesystem, path = resolve(uri)
    return retried(lambda: filesystem.get_file_info(path), f"looking up {uri}")


def list_pages(uri: str) -> Iterator[list[str]]:
    """Every object under the prefix `uri`, as URIs, a page (up to 1,000) at a time.

    For s3:// this follows ListObjectsV2 pages through boto3, so a prefix of millions of
    objects is never held as one list of FileInfo objects; the caller keeps each page in Arrow.
    Other stores come through pyarrow's listing as one page.
    """
    scheme, _, rest = uri.partition("://")
    if scheme != "s3":
        yield list_files(uri)
        return
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield [f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", []) if not item["Key"].endswith("/")]


_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint: str | None = None) -> Any:
    """This process's boto3 S3 client for `endpoint` (default: AWS_ENDPOINT_URL), configured from
    the same environment as pyarrow's: for what pyarrow's S3 file system does not offer (paged
    listings, conditional writes) and for reads in processes that may be forked children, since
    one made in the child owns its connections (pyarrow's S3 client, made again after a fork
    while the parent had a request in flight, waited for ever on a lock the fork copied held)."""
    where = endpoint if endpoint is not None else os.environ.get("AWS_ENDPOINT_URL")
    key = (os.getpid(), where)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3

            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            client = _clients[key] = boto3.client("s3", endpoint_url=where, region_name=region)
        return client


def _reset_clients_after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # another thread of the parent may have held it
    _clients.clear()


os.register_at_fork(after_in_child=_reset_clients_after_fork)


@contextlib.contextmanager
def open_s3_object(uri: str, endpoint: str | None = None) -> Iterator[BinaryIO]:
    """A stream of an s3:// object's bytes, read with this process's boto3 client.

    Raises:
        FileNotFoundError: no such object.
        OSError: any other failure of the request or of the body midway (a cut connection, a
            short body, 503 SlowDown after botocore's own retries), so `retried` can retry it.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        body = s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(uri) from None
        raise OSError(f"{uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise OSError(f"{uri}: {exc}") from exc
    try:
        yield _BotoBody(body, uri)  # type: ignore[misc]
    finally:
        body.close()


class _BotoBody(io.RawIOBase):
    """A botocore body as a binary file whose failures midway are OSErrors."""

    def __init__(self, body: Any, uri: str) -> None:
        self._body, self._uri = body, uri

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return self._body.read(None if size is None or size < 0 else size)
        except BotoCoreError as exc:
            raise OSError(f"{self._uri}: {exc}") from exc

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def list_files(uri: str) -> list[str]:
    """Every object under the prefix `uri`, as URIs, sorted (S3 lists in pages; pyarrow follows them)."""
    import pyarrow.fs as pafs

    filesystem, path = resolve(uri)
    scheme = uri.split("://", 1)[0]
    selector = pafs.FileSelector(path, recursive=True)
    found = retried(lambda: filesystem.get_file_info(selector), f"listing {uri}")
    return sorted(f"{scheme}://{entry.path}" for entry in found if entry.is_file)


def environment() -> dict[str, str]:
    """The object-storage settings of this process, for Ray tasks' `runtime_env`."""
    return {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}
