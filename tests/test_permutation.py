"""The computed permutations behind plan and epoch orders: bijections that invert, uniform over
few samples (where a Feistel network was not), and at training sizes measured as a true random
permutation is, by what a training run would feel: the correlation of place and position, the
class mix of batches drawn from a class-sorted storage order, and how often neighbours in the
order are neighbours in storage."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from shards.permutation import SMALL, Permutation


@pytest.mark.parametrize("count", [1, 2, 3, 5, 17, 1000, SMALL, SMALL + 1, 200_003])
def test_a_permutation_is_a_bijection_that_inverts(count):
    permutation = Permutation(count, (7, 1))
    order = np.asarray(permutation)
    assert np.array_equal(np.sort(order), np.arange(count))
    assert np.array_equal(permutation.inverse(order), np.arange(count))
    places = np.arange(count)[:: max(1, count // 997)]
    assert np.array_equal(permutation.take(places), order[places])  # a batch is the order's slice
    assert np.array_equal(np.asarray(Permutation(count, (7, 1))), order)  # computed again, the same


def test_orders_of_few_samples_come_as_often_as_a_uniform_shuffle_gives_them():
    """Every order of 5 samples, over 12,000 keys: ~100 each. The Feistel network alone gave
    chi-squared ~450 here (2,265 at 60,000 keys); a uniform shuffle stays under 176 (p = 1e-4)."""
    count, keys = 5, 12_000
    seen: dict[tuple[int, ...], int] = {}
    for seed, epoch in itertools.product(range(keys // 10), range(10)):
        order = tuple(np.asarray(Permutation(count, (seed, epoch))).tolist())
        seen[order] = seen.get(order, 0) + 1
    expected = keys / math.factorial(count)
    counts = np.array([seen.get(order, 0) for order in itertools.permutations(range(count))])
    chi_squared = float(((counts - expected) ** 2 / expected).sum())
    assert chi_squared < 176, (chi_squared, counts.min(), counts.max())


def shuffle_measures(order: np.ndarray, classes: int = 10, batch: int = 256) -> tuple[float, float, float]:
    """|correlation| of place and position; mean chi-squared of the class counts of each batch,
    storage being sorted by class (9 on average for a random order); the share of neighbours in
    the order that lie within 1% of the storage order of each other (~0.02 for a random order)."""
    count = len(order)
    correlation = abs(float(np.corrcoef(np.arange(count), order)[0, 1]))
    labels = order * classes // count
    batches = labels[: count // batch * batch].reshape(-1, batch)
    counts = np.stack([np.bincount(row, minlength=classes) for row in batches])
    expected = batch / classes
    mix = float(((counts - expected) ** 2 / expected).sum(1).mean())
    near = float(np.mean(np.abs(np.diff(order)) < count / 100))
    return correlation, mix, near


@pytest.mark.parametrize("count", [10_000, 60_000, 300_000])
def test_at_training_sizes_the_order_measures_as_a_true_random_permutation(count):
    ours = np.array([shuffle_measures(np.asarray(Permutation(count, (seed, 3)))) for seed in range(6)])
    truth = np.array([shuffle_measures(np.random.default_rng(seed).permutation(count)) for seed in range(6)])
    # Mean |r| of a random order is 0.8 / sqrt(count); six seeds' mean stays well within 2.5x.
    assert ours[:, 0].mean() < 2 / math.sqrt(count), ours[:, 0]
    assert abs(ours[:, 1].mean() - truth[:, 1].mean()) < 0.6, (ours[:, 1], truth[:, 1])
    assert abs(ours[:, 2].mean() - truth[:, 2].mean()) < 0.002, (ours[:, 2], truth[:, 2])
    storage = np.arange(count)  # and the measures can tell: storage order fails all three
    correlation, mix, near = shuffle_measures(storage)
    assert correlation > 0.99 and mix > 100 and near > 0.99
