"""The exceptions shards raises.

Every message names the input it is about (a path, a URI, a shard) and the cause, on one line,
so the CLI can print it as it is and a user knows what to fix.
"""

from __future__ import annotations


class ShardsError(Exception):
    """Base of every error shards raises on purpose."""


class ConfigError(ShardsError, ValueError):
    """A bad argument or option, found before any work starts."""


class SourceError(ShardsError):
    """SRC cannot be listed: missing, empty, or a manifest without the needed columns."""


class DecodeError(ShardsError):
    """One input cannot become a sample; the run records it as a reject and goes on."""


class ManifestError(ShardsError):
    """DEST holds no readable, complete or compatible shards run."""


class DestinationError(ShardsError):
    """DEST cannot receive this run (it holds another run, or other files)."""


class RejectLimitError(ShardsError):
    """More inputs were refused than --max-rejects allows."""


class MissingExtraError(ConfigError, ImportError):
    """A feature needs a framework this install lacks; the message names the extra that brings
    it (`pip install 'imageshards[tf]'`). An ImportError too, so `except ImportError` works."""
