"""Prediction: one row per sample, stable order, bounded batches, backs off on out-of-memory."""

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import shards
from shards.options import PreprocessOptions
from shards.tf.predict import PredictOptions, index_sources, predict_to_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_and_data(ray_cluster, photos, tmp_path_factory):
    from shards.tf.training import build_model, compile_model

    root = tmp_path_factory.mktemp("predict")
    dest = str(root / "out")
    shards.preprocess(photos, dest, PreprocessOptions(size=16, shard_size="8KiB"))
    model = compile_model(build_model((16, 16, 3), shards.open(dest).targets, "uint8"), 1e-3)
    path = str(root / "model.keras")
    model.save(path)
    return dest, path, model


def test_predict_writes_one_row_per_sample_in_order_with_injected_oom(model_and_data, tmp_path):
    import tensorflow as tf

    dest, _, model = model_and_data
    dataset = shards.open(dest)
    sizes = []

    def fragile(images):
        sizes.append(len(images))
        if len(images) > 20:  # the device "runs out of memory" above 20 samples
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return model.predict_on_batch(images)

    out = str(tmp_path / "p.parquet")
    result = predict_to_parquet(
        dataset, fragile, out, PredictOptions(batch_size="auto", top_k=2), sources=index_sources(dataset)
    )
    table = pq.read_table(out)
    assert result["rows"] == table.num_rows == 90 and result["batch_size"] == 11
    assert table.column("row").to_pylist() == list(range(90))  # every row once, in order
    # A probe of 16 measures the memory per sample; the budget allows the whole dataset (1024 is
    # capped to 90), which the device refuses, so the batch halves until it fits.
    assert sizes[:6] == [16, 90, 45, 22, 11, 11]
    assert sum(sizes[4:]) == 90  # after backing off, every sample predicted exactly once
    expected = model.predict_on_batch(dataset.read(np.arange(90))[0]).argmax(1)
    assert table.column("prediction").to_pylist() == expected.tolist()
    assert table.column("source").to_pylist() == index_sources(dataset).to_pylist()
    assert all(len(k) == 2 for k in table.column("top_k").to_pylist())


def test_fixed_batch_size_that_does_not_fit_fails_clearly(model_and_data, tmp_path):
    dest, _, _ = model_and_data

    def exhausted(images):
        raise MemoryError

    with pytest.raises(shards.ShardsError, match="out of memory at batch size 50"):
        predict_to_parquet(shards.open(dest), exhausted, str(tmp_path / "p.parquet"), PredictOptions(batch_size=50))
    assert not os.path.exists(tmp_path / "p.parquet")


def test_host_memory_budget_bounds_the_batch_with_the_measured_memory(model_and_data, tmp_path):
    """The budget counts what a probe batch really took (activations included), so the batch is
    never larger than the input alone would allow, and a roomy budget takes the whole set."""
    dest, _, model = model_and_data
    for budget, expected_largest in [(2 * 16 * 16 * 3 * 7, 7), (2**30, 90)]:
        seen = []
        result = predict_to_parquet(
            shards.open(dest),
            lambda x, seen=seen: seen.append(len(x)) or model.predict_on_batch(x),
            str(tmp_path / "p.parquet"),
            PredictOptions(host_memory=budget),
        )
        batches = seen[1:]  # the first call is the probe
        assert sum(batches) == 90 and result["batch_size"] == max(batches)
        if expected_largest == 90:
            assert max(batches) == 90
        else:
            assert max(batches) <= expected_largest


def test_keras_predictions_are_probabilities_with_class_names(model_and_data, tmp_path):
    from shards.tf.predict import keras_predictor

    dest, model_path, _ = model_and_data
    dataset = shards.open(dest)
    predictor = keras_predictor(model_path)
    assert predictor.scores == "probabilities: softmax applied to the model's logits"  # the CNN ends in logits
    out = str(tmp_path / "p.parquet")
    predict_to_parquet(dataset, predictor, out, PredictOptions(batch_size=32, top_k=3))
    table = pq.read_table(out)
    assert table.schema.metadata[b"shards.scores"] == predictor.scores.encode()
    rows = table.to_pylist()
    for row in rows:
        assert all(0 <= p <= 1 for p in row["top_k_scores"]) and row["score"] == row["top_k_scores"][0]
        assert row["prediction_name"] == dataset.classes[row["prediction"]]
        assert row["label_name"] == dataset.classes[row["label"]]
        assert row["top_k_names"] == [dataset.classes[i] for i in row["top_k"]]
    full = predict_to_parquet(dataset, predictor, out, PredictOptions(batch_size=32, top_k=len(dataset.classes)))
    sums = [sum(row) for row in pq.read_table(out).column("top_k_scores").to_pylist()]
    assert full["rows"] == 90 and np.allclose(sums, 1.0, atol=1e-5)


def test_predict_job_as_ray_tasks_equals_one_process(model_and_data, tmp_path):
    dest, model_path, _ = model_and_data
    from shards.tf.predict import predict_dataset

    one = predict_dataset(dest, model_path, str(tmp_path / "one.parquet"), PredictOptions(batch_size=32))
    two = predict_dataset(dest, model_path, str(tmp_path / "two.parquet"), PredictOptions(batch_size=32), workers=2)
    assert one["rows"] == two["rows"] == 90
    a, b = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "two.parquet")
    assert a.column("row").equals(b.column("row")) and a.column("prediction").equals(b.column("prediction"))
    result = subprocess.run(
        [
            sys.executable,
            "jobs/predict.py",
            dest,
            "--model",
            model_path,
            "--out",
            str(tmp_path / "cli.parquet"),
            "--batch-size",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "--batch-size must be a positive integer" in result.stderr
