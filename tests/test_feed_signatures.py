"""The feeds speak one reading vocabulary: `batches`, `to_tf`, `to_keras` and `to_torch` take the
same keywords, with the same defaults, in real signatures that help() shows."""

import inspect

import pytest

from shards.dataset import ShardDataset
from shards.read.dataset import RunReader

#: Every feed's way of choosing its samples: what a ReadSpec and an epoch position hold.
READING = ("shuffle", "seed", "epoch", "rank", "world_size", "drop_last", "start")


def parameters(function):
    return {name: p for name, p in inspect.signature(function).parameters.items() if name != "self"}


@pytest.mark.parametrize("feed", ["to_tf", "to_keras", "to_torch"])
def test_each_feed_takes_the_reading_keywords_of_batches_with_their_defaults(feed):
    batches, method = parameters(RunReader.batches), parameters(getattr(ShardDataset, feed))
    assert next(iter(method)) == "batch_size"
    assert not any(p.kind is p.VAR_KEYWORD for name, p in method.items() if name != "pydataset_kwargs")
    for name in READING:
        assert method[name].kind is inspect.Parameter.KEYWORD_ONLY, (feed, name)
        if feed == "to_torch" and name in ("rank", "world_size"):
            assert method[name].default is None  # torch.distributed's, as DistributedSampler takes them
        else:
            assert method[name].default == batches[name].default, (feed, name)
    if "prefetch" in method:
        assert method["prefetch"].default == batches["prefetch"].default


@pytest.mark.parametrize(
    ("feed", "module", "name"),
    [("to_tf", "shards.tf.adapters", "to_tf"), ("to_keras", "shards.keras.dataset", "ShardsPyDataset")],
)
def test_the_dataset_methods_pass_on_every_keyword_of_the_feed_they_wrap(feed, module, name):
    import importlib

    implementation = getattr(importlib.import_module(module), name)
    wrapped = parameters(implementation)
    wrapped.pop("dataset")
    method = parameters(getattr(ShardDataset, feed))
    assert {n: p.default for n, p in method.items()} == {n: p.default for n, p in wrapped.items()}
