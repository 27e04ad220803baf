"""Feeding Keras: to_tf and PyDataset train a model, split is disjoint, resume neither repeats nor skips."""

import json
import os
import shutil

import numpy as np
import pytest

import shards
from shards.errors import ConfigError
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder


@pytest.fixture(scope="module")
def colour_classes(ray_cluster, tmp_path_factory):
    """A learnable toy task: each class has its own colour cast."""
    root = tmp_path_factory.mktemp("colours")
    make_image_folder(str(root / "photos"), 192, classes=3, sizes=(40, 90), seed=2)
    dest = str(root / "out")
    shards.preprocess(str(root / "photos"), dest, PreprocessOptions(size=24, shard_size="20KiB"))
    return dest


def small_model(dataset):
    from shards.tf.training import build_model, compile_model

    return compile_model(build_model(dataset.shape, dataset.targets, "uint8"), learning_rate=3e-3)


def test_to_tf_has_the_right_element_spec_and_trains(colour_classes):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    ds = shards.open(colour_classes)
    data = ds.to_tf(16, shuffle=True, seed=1)
    images, labels = data.element_spec
    assert images.shape.as_list() == [None, 24, 24, 3] and images.dtype == tf.uint8
    assert labels.shape.as_list() == [None] and labels.dtype == tf.int32
    assert int(data.cardinality()) == 12
    model = small_model(ds)
    untrained = model.evaluate(data, verbose=0)[0]
    history = model.fit(data, epochs=5, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < 0.5 * untrained, (untrained, history.history["loss"])
    assert history.history["accuracy"][-1] > 0.7


def test_keras_pydataset_trains_and_reshuffles_each_epoch(colour_classes):
    import keras

    keras.utils.set_random_seed(0)
    ds = shards.open(colour_classes)
    feed = ds.to_keras(16, shuffle=True, seed=1)
    first_epoch = [frozenset(map(bytes, feed[i][0].reshape(len(feed[i][0]), -1))) for i in range(len(feed))]
    model = small_model(ds)
    untrained = model.evaluate(ds.to_keras(16), verbose=0)[0]
    history = model.fit(feed, epochs=5, verbose=0)
    assert history.history["loss"][-1] < 0.5 * untrained, (untrained, history.history["loss"])
    assert feed.epoch == 4  # epochs 0..4 were read
    feed.epoch = 0
    feed.on_epoch_begin()
    later = [frozenset(map(bytes, feed[i][0].reshape(len(feed[i][0]), -1))) for i in range(len(feed))]
    assert later != first_epoch and set().union(*later) == set().union(*first_epoch)


def test_split_is_disjoint_complete_and_stable(colour_classes):
    ds = shards.open(colour_classes)
    train, validation = ds.split(0.25, seed=3)
    assert (len(train), len(validation)) == (144, 48)
    t_images, _ = train.read(np.arange(len(train)))
    v_images, _ = validation.read(np.arange(len(validation)))
    all_images, _ = ds.read(np.arange(len(ds)))
    as_set = lambda images: {bytes(i) for i in images.reshape(len(images), -1)}  # noqa: E731
    assert not as_set(t_images) & as_set(v_images)
    assert as_set(t_images) | as_set(v_images) == as_set(all_images)
    again, _ = ds.split(0.25, seed=3)[1].read(np.arange(48))
    assert np.array_equal(again, v_images)
    assert sum(len(b) for b, _ in train.batches(10)) == 144


def audit_positions(folder, epoch="0"):
    seen = []
    for name in sorted(os.listdir(folder)):
        seen += json.load(open(os.path.join(folder, name)))["epochs"].get(epoch, [])
    return seen


def test_resume_mid_epoch_with_another_world_size_sees_each_sample_once(colour_classes, tmp_path):
    from shards.tf.training import TrainOptions, read_checkpoint_state, train_worker

    checkpoint, audit = str(tmp_path / "ckpt"), str(tmp_path / "audit")
    common = dict(epochs=1, batch_size=8, checkpoint_dir=checkpoint, audit_dir=audit, output=str(tmp_path / "m.keras"))
    report = train_worker(colour_classes, TrainOptions(**common, stop_after_batches=7))
    assert report["stopped_early"] and report["batches"] == 7
    state = read_checkpoint_state(checkpoint)
    assert (state.epoch, state.position, state.spec.seed, state.spec.shuffle) == (0, 56, 0, True)
    assert not os.path.exists(tmp_path / "m.keras")
    # The saved position counts in seed 0's order: resuming with another seed is refused, not
    # trained on (it would repeat and skip samples without a word).
    with pytest.raises(ConfigError, match=r"cannot resume: .*seed 0 -> 1"):
        train_worker(colour_classes, TrainOptions(**common, resume=True, seed=1))
    # Restart with two ranks: each restores the same checkpoint and takes its slice of the rest.
    shutil.copytree(checkpoint, checkpoint + "-rank1")
    train_worker(colour_classes, TrainOptions(**common, resume=True), rank=0, world_size=2)
    train_worker(
        colour_classes,
        TrainOptions(**dict(common, checkpoint_dir=checkpoint + "-rank1"), resume=True),
        rank=1,
        world_size=2,
    )
    seen = audit_positions(audit)
    assert sorted(seen) == list(range(192))  # every sample exactly once in the interrupted epoch
    assert read_checkpoint_state(checkpoint).epoch == 1
    assert os.path.exists(tmp_path / "m.keras")


@pytest.mark.oldest
def test_trainer_actor_trains_and_writes_the_model(colour_classes, tmp_path):
    from shards.tf.training import TrainOptions
    from shards.trainer import run_training

    (tmp_path / "model.keras").write_bytes(b"yesterday's model")  # replaced: overwrite=True
    report = run_training(
        colour_classes,
        TrainOptions(
            epochs=2,
            batch_size=16,
            output=str(tmp_path / "model.keras"),
            augment=("flip", "brightness"),
            validation_split=0.2,
            overwrite=True,
        ),
    )
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]  # written, then renamed
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]
    assert report["samples"] + report["validation_samples"] == 192 and report["validation_samples"] == 38
    assert "val_loss" in report["epochs"][-1] and report["epochs"][-1]["images_per_second"] > 0
    import keras

    model = keras.models.load_model(str(tmp_path / "model.keras"))
    assert model.input_shape == (None, 24, 24, 3)
    assert any(layer.name == "augmentation" for layer in model.layers)


def test_streaming_generator_gives_the_same_batches_as_direct_reading(ray_cluster, colour_classes):
    from shards.dataset import RemoteShardDataset

    node = ray_cluster.get_runtime_context().get_node_id()
    remote = RemoteShardDataset(colour_classes, node, max_in_flight=2)
    direct = shards.open(colour_classes)
    assert (len(remote), remote.shape, remote.classes) == (len(direct), direct.shape, direct.classes)
    kwargs = dict(shuffle=True, seed=5, epoch=2, rank=1, world_size=2)
    got = [(images.tobytes(), labels.tolist()) for images, labels in remote.batches(10, **kwargs)]
    want = [(images.tobytes(), labels.tolist()) for images, labels in direct.batches(10, **kwargs)]
    assert got == want
    train, _ = remote.split(0.25, seed=3)
    assert len(train) == 144
    images, _ = next(iter(train.to_tf(8)))
    assert images.shape == (8, 24, 24, 3)


def test_unlabeled_data_cannot_be_trained_on(ray_cluster, tmp_path):
    from shards.tf.training import TrainOptions, train_worker

    make_image_folder(str(tmp_path / "flat"), 6, classes=0, sizes=(20, 30))
    shards.preprocess(str(tmp_path / "flat"), str(tmp_path / "out"), PreprocessOptions(size=8))
    with pytest.raises(shards.ConfigError, match="no labels"):
        train_worker(str(tmp_path / "out"), TrainOptions())


def test_train_job_refuses_a_missing_dest_or_model_before_any_ray_work(colour_classes, tmp_path):
    from shards.tf.training import TrainOptions
    from shards.trainer import run_training

    with pytest.raises(shards.ManifestError, match="nothing: no such folder"):
        run_training(str(tmp_path / "nothing"), TrainOptions(output=str(tmp_path / "m.keras")), address="127.0.0.1:9")
    with pytest.raises(shards.ConfigError, match="--model .*no such file"):
        run_training(colour_classes, TrainOptions(model_path=str(tmp_path / "missing.keras")), address="127.0.0.1:9")


def test_a_two_worker_training_run_is_quiet_and_numbers_epochs_from_one(colour_classes, tmp_path):
    """Workers' TensorFlow and Ray Train start-up chatter stays off the terminal unless -v (it
    was 69 lines for 2 workers); epochs are numbered from 1; a second run to the same --output is
    refused before any work."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [
        sys.executable,
        "-m",
        "shards.cli",
        "train",
        colour_classes,
        "--workers",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--output",
        str(tmp_path / "m.keras"),
    ]
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr.strip() == ""
    assert [line.split(":")[0] for line in quiet.stdout.splitlines() if line.startswith("epoch")] == [
        "epoch 1",
        "epoch 2",
    ]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"shards: error: --output {tmp_path / 'm.keras'} already exists; pass --overwrite to replace it"
    ], refused.stderr
    # With -v the workers' own epoch lines show, numbered alike: test_multinode.py's 2-worker run.
