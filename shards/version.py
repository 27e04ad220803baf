"""The installed version, from the package metadata: pyproject.toml is its only source."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "imageshards"  # the name on PyPI; the package and the command are `shards`


def installed_version() -> str:
    """The version of the installed distribution; `0+unknown` when run from an uninstalled tree."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = installed_version()
