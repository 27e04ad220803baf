"""Every kind of target, from CSV and Parquet through npy and TFRecord shards to training and
prediction: class, multi-label, regression, several at once, and extra columns."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

import shards
from shards.errors import SourceError
from shards.options import PreprocessOptions
from shards.sources import list_sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS = ("red", "green", "blue")
COUNT = 96


def _rows(count: int, seed: int = 0) -> list[dict]:
    """Samples whose targets can be learnt from the pixels: a colour per sample."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        colour = rng.integers(0, 256, 3)
        rows.append(
            {
                "path": f"images/{i:03d}.png",
                "id": f"id-{i:03d}",
                "colour": colour,
                "cls": CHANNELS[int(np.argmax(colour))],
                "tags": [name for name, value in zip(CHANNELS, colour) if value > 127],
                "score": float(colour.mean() / 255),
                "vec": [float(colour[0] / 255), float(colour[1] / 255)],
            }
        )
    return rows


@pytest.fixture(scope="module")
def table_sources(tmp_path_factory):
    """The same samples as a CSV list (lists written as JSON cells) and a Parquet list (native lists)."""
    root = tmp_path_factory.mktemp("targets")
    os.makedirs(root / "images")
    rows = _rows(COUNT)
    rng = np.random.default_rng(1)
    for row in rows:
        pixels = np.clip(row["colour"] + rng.normal(0, 6, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / row["path"])
    columns = {name: [row[name] for row in rows] for name in ("path", "id", "cls", "tags", "score", "vec")}
    pq.write_table(pa.table(columns), root / "list.parquet")
    as_text = dict(columns, tags=[json.dumps(t) for t in columns["tags"]], vec=[json.dumps(v) for v in columns["vec"]])
    pacsv.write_csv(pa.table(as_text), root / "list.csv")
    return str(root), {row["id"]: row for row in rows}


CLASSES = sorted(CHANNELS)  # the run sorts class names


def _expected(row: dict, name: str) -> np.ndarray:
    """A row's target as batches hand it out."""
    if name == "cls":
        return np.int32(CLASSES.index(row["cls"]))
    if name == "tags":
        return np.array([float(c in row["tags"]) for c in CLASSES], np.float32)
    return np.asarray(row[name], np.float32)


def _read_back(dest: str, names: list[str], world_size: int) -> dict[str, dict]:
    """Each sample's targets as every rank's batches hand them out, by id; asserts each sample
    is read exactly once across the ranks."""
    dataset = shards.open(dest)
    found: dict[str, dict] = {}
    for rank in range(world_size):
        batches = dataset.batches(8, shuffle=True, seed=3, rank=rank, world_size=world_size, columns=["id"])
        for _, labels, extras in batches:
            labels = labels if isinstance(labels, dict) else {names[0]: labels}
            for k, sample_id in enumerate(extras["id"]):
                assert sample_id not in found, f"{sample_id} read twice"
                found[sample_id] = {name: labels[name][k] for name in names}
    return found


def _assert_equal_to_source(found: dict[str, dict], by_id: dict[str, dict], names: list[str]) -> None:
    assert sorted(found) == sorted(by_id)
    for sample_id, targets in found.items():
        for name in names:
            np.testing.assert_allclose(targets[name], _expected(by_id[sample_id], name), atol=1e-6, err_msg=sample_id)


@pytest.mark.parametrize(
    "source, shard_format", [("csv", "npy"), ("csv", "tfrecord"), ("parquet", "npy"), ("parquet", "tfrecord")]
)
def test_several_targets_read_back_equal_to_the_source_on_one_and_two_ranks(
    ray_cluster, table_sources, tmp_path, source, shard_format
):
    root, by_id = table_sources
    names = ["cls", "tags", "score", "vec"]
    options = PreprocessOptions(
        size=12, shard_size="4KiB", format=shard_format, label_column=",".join(names), columns="id"
    )
    dest = str(tmp_path / "out")
    shards.preprocess(f"{root}/list.{source}", dest, options)
    dataset = shards.open(dest)
    kinds = {t.name: (t.kind, list(t.classes), t.width) for t in dataset.targets.items}
    assert kinds == {
        "cls": ("class", CLASSES, 0),
        "tags": ("multilabel", CLASSES, 3),
        "score": ("regression", [], 0),
        "vec": ("regression", [], 2),
    }
    for world_size in (1, 2):
        _assert_equal_to_source(_read_back(dest, names, world_size), by_id, names)
    _, labels = dataset.read(np.arange(4))
    assert {k: (v.dtype, v.shape) for k, v in labels.items()} == {
        "cls": (np.int32, (4,)),
        "tags": (np.float32, (4, 3)),
        "score": (np.float32, (4,)),
        "vec": (np.float32, (4, 2)),
    }
    # index.parquet holds the targets row by row, beside the extra column.
    for entry in pq.read_table(f"{dest}/index.parquet").to_pylist():
        row = by_id[entry["id"]]
        assert sorted(entry["label"]["tags"]) == sorted(CLASSES.index(t) for t in row["tags"])
        assert entry["label"]["score"] == pytest.approx(row["score"], abs=1e-6)
        assert entry["label"]["cls"] == CLASSES.index(row["cls"])
    manifest = json.loads(open(f"{dest}/manifest.json").read())
    assert manifest["version"] == 3 and manifest["classes"] == CLASSES
    tags = manifest["targets"][1]["stats"]["counts"]
    assert tags == [sum(c in row["tags"] for row in by_id.values()) for c in CLASSES]
    score = manifest["targets"][2]["stats"]
    assert score["max"][0] == pytest.approx(max(row["score"] for row in by_id.values()), abs=1e-6)


@pytest.mark.parametrize(
    "name, kind", [("cls", "class"), ("tags", "multilabel"), ("score", "regression"), ("vec", "regression")]
)
def test_each_kind_alone_from_csv_and_parquet_is_the_same_and_reads_back(
    ray_cluster, table_sources, tmp_path, name, kind
):
    root, by_id = table_sources
    runs = {}
    for source, workers in (("csv", 1), ("parquet", 2)):
        dest = str(tmp_path / source)
        options = PreprocessOptions(size=12, shard_size="4KiB", label_column=name, columns="id")
        shards.preprocess(f"{root}/list.{source}", dest, options, workers=workers)
        assert shards.open(dest).targets.items[0].kind == kind
        runs[source] = _read_back(dest, [name], 2)
        _assert_equal_to_source(runs[source], by_id, [name])
    # Same samples, same targets, whatever the list's format and the number of workers.
    labels = {source: shards.open(str(tmp_path / source)).labels() for source in runs}
    assert np.array_equal(labels["csv"], labels["parquet"])
    with (
        open(f"{tmp_path}/csv/shard-00000.labels.npy", "rb") as a,
        open(f"{tmp_path}/parquet/shard-00000.labels.npy", "rb") as b,
    ):
        assert a.read() == b.read()


def test_tar_json_fields_give_targets_and_extra_columns(ray_cluster, tmp_path):
    import webdataset as wds

    rows = _rows(24, seed=7)
    with wds.TarWriter(str(tmp_path / "data.tar")) as sink:
        for row in rows:
            pixels = np.full((20, 20, 3), row["colour"], np.uint8)
            meta = {"tags": row["tags"], "score": row["score"], "id": row["id"]}
            sink.write({"__key__": row["id"], "png": pixels, "json": meta, "txt": f"a {row['cls']} square"})
    options = PreprocessOptions(size=12, label_column="tags,score", columns="id,txt")
    dest = str(tmp_path / "out")
    shards.preprocess(str(tmp_path / "data.tar"), dest, options)
    found = _read_back(dest, ["tags", "score"], 1)
    _assert_equal_to_source(found, {row["id"]: row for row in rows}, ["tags", "score"])
    dataset = shards.open(dest)
    captions = dataset.columns(["id", "txt"])
    by_id = {row["id"]: row for row in rows}
    assert all(text == f"a {by_id[i]['cls']} square" for i, text in zip(captions["id"], captions["txt"]))


def test_arrays_take_targets_as_keras_fit_does(ray_cluster, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 8, 8, 3), np.uint8)
    hot = np.zeros((10, 5), np.uint8)
    hot[np.arange(10), np.arange(10) % 3] = 1  # classes 3 and 4 never set: still 5 classes
    y = {"tags": hot, "age": rng.uniform(0, 90, 10).astype(np.float64), "box": rng.uniform(0, 1, (10, 4))}
    dest = str(tmp_path / "out")
    shards.preprocess((x, y), dest, PreprocessOptions(size=8))
    dataset = shards.open(dest)
    assert [(t.name, t.kind, t.width) for t in dataset.targets.items] == [
        ("tags", "multilabel", 5),
        ("age", "regression", 0),
        ("box", "regression", 4),
    ]
    images, labels = dataset.read(np.arange(10))
    assert np.array_equal(images, x)
    assert np.array_equal(labels["tags"], hot.astype(np.float32))
    np.testing.assert_allclose(labels["age"], y["age"], rtol=1e-6)
    np.testing.assert_allclose(labels["box"], y["box"], rtol=1e-6)


def _write_csv(folder, label_cells: list[str], image_count: int = 3) -> str:
    os.makedirs(folder / "images", exist_ok=True)
    lines = ["path,label"]
    for i, cell in enumerate(label_cells):
        Image.fromarray(np.full((10, 10, 3), i * 40, np.uint8)).save(folder / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,{cell}")
    (folder / "list.csv").write_text("\n".join(lines) + "\n")
    return str(folder / "list.csv")


@pytest.mark.parametrize(
    "cells, words",
    [
        (['"[""cat""]"', "dog", '"[""cat"", ""dog""]"'], "mixes lists and single values (row 2"),
        (['"[0.5, 1.5]"', '"[1.0]"', '"[2.0, 3.0]"'], "regression lists must all have one length, found lengths 1, 2"),
        (['"[""cat"", ""dog""]"', '"[""cat"", dog]"', '"[]"'], "row 2: cannot parse"),
        (['"[1, ""cat""]"', '"[2]"', '"[3]"'], "'label' mixes types"),
        (['"[[1], [2]]"', '"[3]"', '"[4]"'], "is not a flat JSON list"),
    ],
)
def test_bad_target_columns_are_refused_in_one_line_before_any_work(tmp_path, cells, words):
    path = _write_csv(tmp_path, cells)
    with pytest.raises(SourceError) as caught:
        list_sources(path)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_nan_or_empty_regression_target_is_a_reject_with_its_reason(ray_cluster, tmp_path):
    path = _write_csv(tmp_path, ["0.5", "nan", "", "1.5"])
    dest = str(tmp_path / "out")
    summary = shards.preprocess(path, dest, PreprocessOptions(size=8))
    assert (summary.written, summary.rejected) == (2, 2)
    rejects = [json.loads(line) for line in open(f"{dest}/rejects.jsonl")]
    assert [r["reason"] for r in rejects] == ["regression target 'label' is empty or NaN"] * 2
    assert sorted(os.path.basename(r["source"]) for r in rejects) == ["1.png", "2.png"]
    assert sorted(shards.open(dest).labels().tolist()) == [0.5, 1.5]


def test_an_unknown_extra_column_is_refused_by_the_run_and_by_the_reader(ray_cluster, table_sources, tmp_path):
    root, _ = table_sources
    with pytest.raises(SourceError, match="no column 'caption' \\(--columns\\)"):
        list_sources(f"{root}/list.csv", extra_columns=("caption",))
    with pytest.raises(SourceError, match="no label column 'age'"):
        list_sources(f"{root}/list.parquet", label_columns=("age",))
    dest = str(tmp_path / "out")
    shards.preprocess(f"{root}/list.csv", dest, PreprocessOptions(size=8, label_column="cls"))
    with pytest.raises(ValueError, match="no column 'id' in index.parquet"):
        shards.open(dest).batches(4, columns=["id"])


@pytest.fixture(scope="module")
def learnable(ray_cluster, table_sources, tmp_path_factory):
    """One DEST with every kind of target, all learnable from the colour."""
    root, _ = table_sources
    dest = str(tmp_path_factory.mktemp("learnable") / "out")
    options = PreprocessOptions(size=16, label_column="cls,tags,score,vec", columns="id")
    shards.preprocess(f"{root}/list.parquet", dest, options)
    return dest


@pytest.mark.parametrize("name", ["cls", "tags", "score", "vec"])
def test_the_default_model_learns_each_kind_with_its_head_and_loss(learnable, name):
    import keras

    from shards.targets import Targets
    from shards.tf.training import build_model, compile_model

    keras.utils.set_random_seed(0)
    dataset = shards.open(learnable)
    targets = Targets(tuple(t for t in dataset.targets.items if t.name == name))
    model = compile_model(build_model(dataset.shape, targets, "uint8"), 3e-3, targets)

    def one_target(images, labels):
        return images, labels[name]

    train = dataset.to_tf(4, shuffle=True, seed=1).map(one_target)
    untrained = model.evaluate(dataset.to_tf(32).map(one_target), verbose=0)[0]
    # Colour must be learnt through GroupNormalization, which removes each group's mean: some
    # seeds take a few epochs more than others, so train until the loss halves, up to 8 epochs.
    for epoch in range(8):
        model.fit(train, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
        trained = model.evaluate(dataset.to_tf(32).map(one_target), verbose=0)[0]
        if trained < 0.5 * untrained:
            break
    assert trained < 0.5 * untrained, (name, untrained, trained)


def test_train_and_predict_jobs_follow_the_kinds_of_a_multi_output_dest(learnable, tmp_path):
    """jobs/train.py builds one head per target (Ray Train, 2 workers) and jobs/predict.py
    writes each target's columns: class names, multi-label names over the threshold and
    scores, regression values."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    model = str(tmp_path / "m.keras")
    train = [sys.executable, "jobs/train.py", learnable, "--workers", "2", "--epochs", "2", "--batch-size", "8"]
    trained = subprocess.run(
        [*train, "--output", model], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"epoch \d+: loss ([0-9.]+)", trained.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0], trained.stdout
    out = str(tmp_path / "p.parquet")
    predict = [sys.executable, "jobs/predict.py", learnable, "--model", model, "--out", out, "--threshold", "0.3"]
    predicted = subprocess.run(predict, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    table = pq.read_table(out)
    assert table.num_rows == COUNT
    assert {"cls_prediction_name", "tags_prediction_names", "tags_scores", "score_prediction", "vec_prediction"} <= set(
        table.column_names
    )
    for row in table.slice(0, 10).to_pylist():
        assert row["cls_prediction_name"] in CLASSES and len(row["tags_scores"]) == 3
        expected = [c for c, s in zip(CLASSES, row["tags_scores"]) if s >= 0.3]
        assert row["tags_prediction_names"] == expected and len(row["vec_prediction"]) == 2


def test_inspect_preview_and_split_follow_the_kinds(learnable, tmp_path):
    from shards.targets import describe

    result = subprocess.run(
        [sys.executable, "-m", "shards.cli", "inspect", learnable], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "target    tags: multilabel, 3 classes" in result.stdout
    assert re.search(
        r"target    vec: regression\[2\]\n  \[0\] min [0-9.]+  mean [0-9.]+  max [0-9.]+\n  \[1\]", result.stdout
    )
    dataset = shards.open(learnable)
    train, validation = dataset.split(0.25, seed=2)
    labels = dataset.labels()
    _, held = validation.read(np.arange(len(validation)))
    assert len(train) + len(validation) == COUNT
    np.testing.assert_array_equal(held["tags"], validation.labels()["tags"])
    assert {k: v.shape[1:] for k, v in labels.items()} == {"cls": (), "tags": (3,), "score": (), "vec": (2,)}
    _, first = dataset.read(np.arange(1))
    caption = describe(dataset.targets, {name: values[0] for name, values in first.items()})
    assert caption.startswith(f"cls={CLASSES[first['cls'][0]]}, tags=") and ", vec=" in caption
    preview = subprocess.run(
        [sys.executable, "-m", "shards.cli", "preview", learnable, "-o", str(tmp_path / "p.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert preview.returncode == 0 and os.path.getsize(tmp_path / "p.png") > 0, preview.stderr
