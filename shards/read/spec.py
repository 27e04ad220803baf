"""How a reader orders and slices a dataset (`ReadSpec`), and where it stands (`ReadState`).

One frozen value carries what used to travel as seven loose arguments through the reader, the
TF adapters, the remote stream and training, as grain's and streaming's readers do. A state is
the spec plus the epoch and a position in the epoch's global order. The position means the same
thing for any batch size, rank or world size (ranks slice one global order), so a state resumes
with those changed; it means nothing once the order itself differs (another seed, shuffle
window, shuffle or drop_last), so `ReadState.position_for` refuses that instead of silently
repeating and skipping samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shards.errors import ConfigError

#: The fields a global order depends on: a saved position is valid only where they are equal.
ORDER_FIELDS = ("shuffle", "seed", "shuffle_window", "drop_last")


@dataclasses.dataclass(frozen=True)
class ReadSpec:
    """How one rank reads a dataset, epoch after epoch.

    Attributes:
        batch_size: samples per batch on this rank.
        shuffle: permute each epoch from (seed, epoch); otherwise storage order.
        seed: the shuffle seed, the same on every rank.
        rank: this reader's slice of every global batch of `batch_size * world_size`.
        world_size: how many ranks read the dataset together.
        drop_last: drop the last incomplete global batch instead of padding it.
        shuffle_window: shuffle within windows of this many shards (an object-storage cache's
            order); None shuffles the whole dataset at once.
    """

    batch_size: int
    shuffle: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    shuffle_window: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"rank must be in [0, world_size) with world_size >= 1, got {self.rank} of {self.world_size}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.shuffle_window is not None and self.shuffle_window < 1:
            raise ConfigError(f"shuffle window must be at least 1 shard, got {self.shuffle_window}")

    @property
    def global_batch(self) -> int:
        """Samples all ranks read together in one step."""
        return self.batch_size * self.world_size

    def replace(self, **changes: Any) -> ReadSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ReadState:
    """Where a reader stands: its spec, the epoch, and the position in that epoch's global order.

    `to_json()` is what checkpoints save; `position_for(spec)` is how a resumed reader gets its
    `start` back, after checking that the order it resumes is the one the position counts in.
    """

    spec: ReadSpec
    epoch: int
    position: int
    batches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.spec),
            "epoch": self.epoch,
            "position": self.position,
            "batches": self.batches,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ReadState:
        """Parse a saved state; refuses one without the order it was taken in.

        Raises:
            ConfigError: the record is not a reader state (or was saved before states named
                their order, so no resume could be checked).
        """
        try:
            fields = {f.name: record[f.name] for f in dataclasses.fields(ReadSpec) if f.name in record}
            missing = [name for name in ("batch_size", *ORDER_FIELDS) if name not in fields]
            if missing:
                raise ConfigError(
                    f"the saved reader state does not say its {', '.join(missing)}; "
                    "it cannot be resumed safely (start the run afresh)"
                )
            return cls(ReadSpec(**fields), int(record["epoch"]), int(record["position"]), int(record.get("batches", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a reader state ({exc})") from None

    def position_for(self, spec: ReadSpec) -> int:
        """The position to resume from with `spec`.

        Batch size, rank and world size may differ from the saved spec; the order may not.

        Raises:
            ConfigError: one line naming each order field that differs.
        """
        changed = [
            f"{name} {getattr(self.spec, name)!r} -> {getattr(spec, name)!r}"
            for name in ORDER_FIELDS
            if getattr(self.spec, name) != getattr(spec, name)
        ]
        if changed:
            raise ConfigError(
                "cannot resume: the saved position counts in another order ("
                + ", ".join(changed)
                + "); resume with the saved settings or start afresh"
            )
        return self.position
