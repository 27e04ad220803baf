"""`make demo` convinces: it says what it planted, validation accuracy is close to training
accuracy, and predicting the same data with the saved model agrees with training."""

import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # runs the whole demo in a process of its own

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_demo_trains_a_model_that_predicts_as_well_as_it_trained(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    folder = str(tmp_path / "demo")
    demo = subprocess.run(
        [sys.executable, "jobs/demo.py", folder], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "planted" in demo.stdout and "a JPEG cut off after its header" in demo.stdout
    assert re.search(r"rejected, not fatal: .*broken\.jpg: corrupt image", demo.stdout), demo.stdout
    epochs = [line for line in demo.stdout.splitlines() if "epoch " in line]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1", "epoch 2", "epoch 3"], demo.stdout  # once each
    assert "\x1b[" not in demo.stdout + demo.stderr  # no terminal colour codes in a log
    # The second embedded Ray (training, after the preprocess) starts as cleanly as the first:
    # Ray had written the first session's spilling folder into the config both were given.
    assert "object spilling config" not in demo.stdout + demo.stderr
    last = epochs[-1]
    accuracy = float(re.search(r" accuracy ([0-9.]+)", last).group(1))
    validation = float(re.search(r"val_accuracy ([0-9.]+)", last).group(1))
    assert accuracy > 0.6 and abs(accuracy - validation) <= 0.1, last

    out = str(tmp_path / "predictions.parquet")
    predict = subprocess.run(
        [
            sys.executable,
            "-m",
            "shards.cli",
            "predict",
            os.path.join(folder, "shards"),
            "--model",
            os.path.join(folder, "model.keras"),
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert "absl::InitializeLog" not in predict.stderr and "oneDNN" not in predict.stderr  # TensorFlow's notices
    table = pq.read_table(out, columns=["label", "prediction"]).to_pydict()
    agreement = float(np.mean(np.array(table["label"]) == np.array(table["prediction"])))
    assert abs(agreement - accuracy) <= 0.1, (agreement, accuracy)
