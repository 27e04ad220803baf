"""Object storage (s3://, gs://) through pyarrow's filesystems: listing and reading inputs.

The endpoint and credentials come from the standard environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or GCS's own), which the driver
hands to its Ray tasks through `runtime_env`, so every worker reaches the same store.
Remote I/O, and only remote I/O, is retried.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

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


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `uri` and the path within it (`bucket/key`)."""
    scheme, _, rest = uri.partition("://")
    bucket = rest.split("/", 1)[0]
    return _filesystem(f"{scheme}://{bucket}", os.environ.get("AWS_ENDPOINT_URL")), rest.rstrip("/")


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


def s3_client() -> Any:
    """A boto3 S3 client for what pyarrow's S3 file system does not offer (paged listings,
    conditional writes), configured from the same environment."""
    import boto3

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), region_name=region)


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
