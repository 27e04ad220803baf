"""CSV or Parquet lists of http(s) URLs (img2dataset's input): a `url` column, optional label
and extra columns, fetched by the shard tasks themselves.

The driver lists the URLs and nothing more: no request is made before the tasks run, so a list
of millions starts at once. Each task fetches its shard's URLs with bounded concurrency
(`shards.io.http`); a URL that fails (`HTTP 404`, `timed out after 10 s`, too large, not an
image) is a reject with that reason. Only http:// and https:// are accepted, checked for every
row before any work.

A URL's credentials (`http://user:secret@host/...`) are used to fetch it and never written:
index.parquet, rejects.jsonl and every message name it as `http://***@host/...`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from shards.errors import SourceError
from shards.io.http import SCHEMES, FetchSettings, fetch_all
from shards.sources.inputs import Input

if TYPE_CHECKING:
    import pyarrow as pa

    from shards.sources.listing import Listing

URL_COLUMN = "url"
#: A URL's userinfo: everything of the authority before its last "@".
_USERINFO = r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@"


@dataclasses.dataclass(frozen=True)
class UrlInputs:
    """One shard's URLs, fetched a window ahead of the decoder (see `fetch_all`)."""

    urls: Sequence[str]
    settings: FetchSettings

    def read(self, max_bytes: int) -> Iterator[Input]:
        """Each URL's body, or why not, in order."""
        return fetch_all(self.urls, max_bytes, self.settings)


@dataclasses.dataclass(frozen=True)
class UrlKind:
    """How a URL list is read: only `inputs()` of a shard travels to its task."""

    urls: pa.Array | pa.ChunkedArray
    settings: FetchSettings

    @property
    def remote(self) -> bool:
        """URLs need no object-storage settings on the workers."""
        return False

    def inputs(self, positions: np.ndarray) -> UrlInputs:
        """The URLs at these listing positions."""
        return UrlInputs(self.urls.take(positions).to_pylist(), self.settings)

    def select(self, positions: np.ndarray) -> UrlKind:
        """The kind of the listing's rows at `positions` (`Listing.select`)."""
        return UrlKind(self.urls.take(positions), self.settings)

    def concat(self, others: Sequence[UrlKind]) -> UrlKind:
        """This kind's URLs followed by the others' (`Listing.concat`)."""
        import pyarrow as pa

        chunks = [kind.urls for kind in (self, *others)]
        return UrlKind(
            pa.chunked_array([c for part in chunks for c in _chunks(part)], pa.large_string()), self.settings
        )


def list_urls(
    path: str,
    table: pa.Table,
    url_column: str,
    label_columns: tuple[str, ...],
    extra_columns: tuple[str, ...],
    settings: FetchSettings,
) -> Listing:
    """A listing of the URLs in `table` (read from the list at `path`).

    Raises:
        SourceError: no such column, a row that is empty or not http(s), or bad targets.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from shards.sources.manifest import listing_of, text_column

    if url_column not in table.column_names:
        raise SourceError(f"{path}: no URL column {url_column!r}; it has {table.column_names}")
    urls = text_column(path, table, url_column, "URLs")
    lowered = pc.utf8_lower(urls)
    fetchable = pc.or_(pc.starts_with(lowered, SCHEMES[0]), pc.starts_with(lowered, SCHEMES[1]))
    names = redacted(urls)
    refused = pc.sum(pc.invert(fetchable).cast(pa.int64())).as_py() or 0
    if refused:
        first = names.filter(pc.invert(fetchable))[0].as_py()
        raise SourceError(
            f"{path}: {refused:,} row(s) of {url_column!r} are not http:// or https:// URLs, such as {first[:200]!r}"
        )
    return listing_of(path, table, names, label_columns, extra_columns, kind=UrlKind(urls, settings))


def redacted(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    """`urls` as they are written and printed: userinfo replaced by `***`."""
    import pyarrow.compute as pc

    return pc.replace_substring_regex(urls, pattern=_USERINFO, replacement=r"\1***@")


def _chunks(values: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    import pyarrow as pa

    return values.chunks if isinstance(values, pa.ChunkedArray) else [values]
