import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.errors import ConfigError
from shards.read.sampling import batch_count, epoch_order, position_after, rank_batches, window_order
from shards.read.spec import ReadSpec, ReadState


@settings(max_examples=80, deadline=None)
@given(
    count=st.integers(1, 400),
    batch=st.integers(1, 40),
    world=st.integers(1, 6),
    shuffle=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_ranks_together_see_every_sample_once_per_epoch(count, batch, world, shuffle, seed):
    order = epoch_order(count, shuffle=shuffle, seed=seed, epoch=3)
    per_rank = [list(rank_batches(order, ReadSpec(batch, rank=r, world_size=world))) for r in range(world)]
    lengths = {len(b) for b in per_rank}
    assert lengths == {batch_count(count, ReadSpec(batch, world_size=world))}
    seen = collections.Counter(int(i) for batches in per_rank for b in batches for i in b)
    assert set(seen) == set(range(count))
    padding = sum(seen.values()) - count
    assert 0 <= padding < world  # only the padding of the last global batch repeats
    for step in range(len(per_rank[0])):  # every rank's batch at a step has the same size
        assert len({len(batches[step]) for batches in per_rank}) == 1


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 400), batch=st.integers(1, 40), world=st.integers(1, 6))
def test_drop_last_never_repeats_and_gives_full_batches(count, batch, world):
    order = epoch_order(count, shuffle=True, seed=0, epoch=0)
    per_rank = [
        list(rank_batches(order, ReadSpec(batch, rank=r, world_size=world, drop_last=True))) for r in range(world)
    ]
    flat = [int(i) for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat)) == count // (batch * world) * batch * world
    assert all(len(b) == batch for batches in per_rank for b in batches)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 300),
    batch=st.integers(1, 20),
    world_before=st.integers(1, 4),
    world_after=st.integers(1, 4),
    stop_after=st.integers(0, 20),
)
def test_resume_with_another_world_size_neither_repeats_nor_skips(count, batch, world_before, world_after, stop_after):
    order = epoch_order(count, shuffle=True, seed=5, epoch=1)
    total = batch_count(count, ReadSpec(batch, world_size=world_before))
    stop_after = min(stop_after, total)
    before = [
        list(rank_batches(order, ReadSpec(batch, rank=r, world_size=world_before)))[:stop_after]
        for r in range(world_before)
    ]
    start = position_after(count, ReadSpec(batch, world_size=world_before), stop_after)
    after = [
        list(rank_batches(order, ReadSpec(batch, rank=r, world_size=world_after, drop_last=True), start=start))
        for r in range(world_after)
    ]
    tail = count - start - (count - start) // (batch * world_after) * batch * world_after
    seen = [int(i) for part in (before, after) for batches in part for b in batches for i in b]
    if start < count:  # padding only happens at the very end of an epoch
        assert len(seen) == len(set(seen)) == count - tail


def test_shuffle_differs_between_epochs_and_is_stable_for_a_seed():
    a0 = epoch_order(1000, shuffle=True, seed=1, epoch=0)
    assert np.array_equal(a0, epoch_order(1000, shuffle=True, seed=1, epoch=0))
    assert not np.array_equal(a0, epoch_order(1000, shuffle=True, seed=1, epoch=1))
    assert not np.array_equal(a0, epoch_order(1000, shuffle=True, seed=2, epoch=0))
    assert np.array_equal(epoch_order(5, shuffle=False, seed=1, epoch=4), np.arange(5))


def test_fewer_samples_than_ranks_still_gives_every_rank_a_batch():
    order = epoch_order(2, shuffle=False, seed=0, epoch=0)
    per_rank = [list(rank_batches(order, ReadSpec(4, rank=r, world_size=3))) for r in range(3)]
    assert [len(b) for b in per_rank] == [1, 1, 1]
    assert sorted(int(b[0][0]) for b in per_rank) == [0, 0, 1]


@pytest.mark.parametrize(
    "kwargs", [dict(rank=2, world_size=2), dict(rank=-1), dict(world_size=0), dict(seed=-1), dict(shuffle_window=0)]
)
def test_bad_slicing_arguments_are_refused(kwargs):
    with pytest.raises(ConfigError):
        ReadSpec(2, **kwargs)
    with pytest.raises(ConfigError, match="batch_size"):
        ReadSpec(0)
    with pytest.raises(ConfigError, match="start must be in"):
        list(rank_batches(np.arange(10), ReadSpec(2), start=11))


def test_a_saved_state_resumes_only_in_the_order_it_counts_in():
    saved = ReadState(ReadSpec(32, shuffle=True, seed=7, world_size=4), epoch=2, position=640)
    restored = ReadState.from_json(saved.to_json())
    assert restored == saved
    # Batch size, rank and world size may change: positions count in the global order.
    assert restored.position_for(ReadSpec(16, shuffle=True, seed=7, rank=1, world_size=2)) == 640
    for changed, words in [
        (dict(seed=8), "seed 7 -> 8"),
        (dict(shuffle_window=4), "shuffle_window None -> 4"),
        (dict(drop_last=True), "drop_last False -> True"),
        (dict(shuffle=False), "shuffle"),
    ]:
        with pytest.raises(ConfigError, match=f"cannot resume: .*{words}"):
            restored.position_for(ReadSpec(32, **{"shuffle": True, "seed": 7, **changed}))
    with pytest.raises(ConfigError, match="does not say its shuffle, seed"):
        ReadState.from_json({"epoch": 1, "position": 5, "batch_size": 8})


@settings(max_examples=80, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    window=st.integers(1, 5),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 5),
)
def test_window_order_is_a_permutation_that_reads_a_window_of_shards_at_a_time(counts, window, seed, epoch):
    shard_of = np.repeat(np.arange(len(counts)), counts)
    order = window_order(shard_of, seed=seed, epoch=epoch, window=window)
    assert sorted(order.tolist()) == list(range(len(shard_of)))
    assert np.array_equal(order, window_order(shard_of, seed=seed, epoch=epoch, window=window))
    # Cut the order where each window ends: every piece draws on at most `window` shards, and
    # no shard comes back once the order has left it.
    shards_in_order = shard_of[order]
    finished: set[int] = set()
    current: set[int] = set()
    for shard in shards_in_order.tolist():
        if shard not in current:
            assert shard not in finished
            if len(current) == window:
                finished |= current
                current = set()
            current.add(shard)
    assert len(current) <= window


def test_window_order_changes_with_the_epoch_and_mixes_shards_within_a_window():
    shard_of = np.repeat(np.arange(8), 50)
    first = window_order(shard_of, seed=0, epoch=0, window=4)
    assert not np.array_equal(first, window_order(shard_of, seed=0, epoch=1, window=4))
    assert len(set(shard_of[first[:40]].tolist())) > 1  # samples of a window's shards interleave
    with pytest.raises(ConfigError, match="at least 1 shard"):
        window_order(shard_of, seed=0, epoch=0, window=0)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 5000), seed=st.integers(0, 2**32), epoch=st.integers(0, 50))
def test_a_computed_permutation_is_a_bijection_with_an_inverse(count, seed, epoch):
    order = epoch_order(count, shuffle=True, seed=seed, epoch=epoch)
    every = np.asarray(order)
    assert sorted(every.tolist()) == list(range(count))
    assert np.array_equal(order.inverse(every), np.arange(count))
    assert np.array_equal(order[3:40], every[3:40])


def test_an_epoch_over_a_billion_samples_is_computed_batch_by_batch():
    """No array of the epoch is made: a permutation array of 10^9 would take 8 GB."""
    import tracemalloc

    tracemalloc.start()
    order = epoch_order(10**9, shuffle=True, seed=7, epoch=2)
    batches = rank_batches(order, ReadSpec(256, rank=3, world_size=4), start=512)
    picked = [batches[0], batches[123_456], batches[len(batches) - 1]]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20
    assert len(batches) == (10**9 - 512) // 1024
    assert all(len(b) == 256 and len(set(b.tolist())) == 256 for b in picked)
    assert all(b.min() >= 0 and b.max() < 10**9 for b in picked)
    assert not np.array_equal(picked[0], rank_batches(order, ReadSpec(256, rank=2, world_size=4), start=512)[0])


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 300), batch=st.integers(1, 20), world=st.integers(1, 4), drop=st.booleans())
def test_rank_batches_index_as_they_iterate(count, batch, world, drop):
    spec = ReadSpec(batch, rank=world - 1, world_size=world, drop_last=drop)
    batches = rank_batches(epoch_order(count, shuffle=True, seed=1, epoch=0), spec, start=count // 3)
    listed = list(batches)
    assert len(listed) == len(batches) == batch_count(count, spec, start=count // 3)
    assert all(np.array_equal(batches[i], b) for i, b in enumerate(listed))
    with pytest.raises(IndexError):
        batches[len(batches)]
