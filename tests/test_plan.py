import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.layout.plan import plan_shards


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 3000), per_shard=st.integers(1, 400), seed=st.integers(0, 2**32))
def test_plan_puts_each_input_in_exactly_one_shard(count, per_shard, seed):
    plan = plan_shards(count, per_shard, seed)
    every = np.concatenate([spec.positions for spec in plan]) if len(plan) else np.empty(0)
    assert sorted(every.tolist()) == list(range(count))
    assert all(len(spec.positions) == per_shard for spec in list(plan)[:-1])
    assert len(plan) == -(-count // per_shard)


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 2000), per_shard=st.integers(1, 300), seed=st.integers(0, 2**32))
def test_plan_is_stable_for_a_seed(count, per_shard, seed):
    first, second = plan_shards(count, per_shard, seed), plan_shards(count, per_shard, seed)
    assert np.array_equal(first.order, second.order)
    assert [s.name for s in first] == [s.name for s in second]


def test_plan_mixes_classes_and_differs_between_seeds():
    # A class-sorted listing: positions 0..99 class 0, 100..199 class 1.
    plan = plan_shards(200, 50, seed=0)
    first_shard = plan[0].positions
    assert (first_shard < 100).any() and (first_shard >= 100).any()
    assert not np.array_equal(plan.order, plan_shards(200, 50, seed=1).order)


def test_shard_names_sort_in_plan_order():
    names = [spec.name for spec in plan_shards(25, 2, 0)]
    assert names == sorted(names) and names[0] == "shard-00000"


def test_a_plan_of_a_billion_inputs_holds_no_array_of_them():
    import tracemalloc

    tracemalloc.start()
    plan = plan_shards(10**9, 21_845, seed=3)
    first, last = plan[0], plan[len(plan) - 1]
    counts = plan.counts()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 2**20  # the specs' positions and the counts list, not 10^9 positions
    assert sum(counts) == 10**9 and len(counts) == len(plan) == -(-(10**9) // 21_845)
    assert len(first.positions) == 21_845 and len(last.positions) == 10**9 % 21_845
    assert not set(first.positions.tolist()) & set(last.positions.tolist())
    assert plan.named(last.name).index == last.index and plan.names()[-1] == last.name


# The plan order of each PLAN_ORDER, as a digest: a run resumed by code whose permutation
# differs would keep shards of one order and write the rest by the other.
PLAN_ORDER_DIGESTS = {2: "3bd9a7e90ba99140", 3: "cfbc3a13627268c7"}


def test_the_plan_order_is_the_one_its_run_key_names():
    import hashlib

    from shards.layout.manifest import PLAN_ORDER

    order = np.asarray(plan_shards(1000, 100, seed=0).order, dtype="<i8")
    digest = hashlib.sha256(order.tobytes()).hexdigest()[:16]
    assert PLAN_ORDER_DIGESTS.get(PLAN_ORDER) == digest, (
        f"the plan's order changed (digest {digest}) under PLAN_ORDER {PLAN_ORDER}: raise "
        "shards.layout.manifest.PLAN_ORDER, so runs of the old order are not resumed, and record the digest here"
    )
