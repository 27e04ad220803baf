"""Package names that load on first use (PEP 562), for packages a Ray worker passes through.

A worker imports `shards` and `shards.sources` on its way to a shard task's modules; importing
everything those packages name (the reader, the driver's run, the listings and pyarrow) cost
each worker ~90 ms before its first shard. Their public names stay where they were, found
through the module `__getattr__` and `__dir__` this builds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    namespace: dict[str, Any], homes: Mapping[str, tuple[str, str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for the module whose globals are `namespace`.

    Args:
        namespace: the package's `globals()`; each name found is stored there, so the next
            lookup does not come back here.
        homes: public name -> (module, attribute) that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        module, attribute = homes[name]
        value = namespace[name] = getattr(importlib.import_module(module), attribute)
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__
