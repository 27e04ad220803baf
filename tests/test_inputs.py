"""Every kind of input a user's data holds is accepted, or refused with a reason; the run completes."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq

import shards
from shards.options import PreprocessOptions
from tests.corpus import build_corpus


def test_a_corpus_of_every_input_kind_gives_exact_counts_and_reasons(ray_cluster, tmp_path):
    accepted, reasons = build_corpus(str(tmp_path / "src"))
    summary = shards.preprocess(str(tmp_path / "src"), str(tmp_path / "out"), PreprocessOptions(size=32))
    good = sorted(name for name, ok in accepted.items() if ok)
    assert (summary.inputs, summary.written, summary.rejected) == (len(accepted), len(good), len(reasons))
    written = sorted(
        os.path.basename(s) for s in pq.read_table(tmp_path / "out" / "index.parquet").column("source").to_pylist()
    )
    assert written == good
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    got = {os.path.basename(r["source"]): r["reason"] for r in rejects}
    assert set(got) == set(reasons)
    for name, words in reasons.items():
        assert words in got[name], (name, got[name])
    images, _ = shards.open(str(tmp_path / "out")).read(np.arange(len(good)))
    assert images.shape == (len(good), 32, 32, 3)


def test_unreadable_files_are_refused_for_permission():
    """Root reads any file whatever its mode, so the read happens as user `nobody` in a child."""
    with tempfile.TemporaryDirectory() as folder:  # under /tmp, which `nobody` can traverse
        os.chmod(folder, 0o755)
        locked = os.path.join(folder, "locked.jpg")
        with open(locked, "wb") as handle:
            handle.write(b"\xff\xd8\xff")
        os.chmod(locked, 0)
        code = (
            "import os, sys\n"
            "from shards.sources.files import read_file\n"
            "from shards.errors import DecodeError\n"
            "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
            "try:\n    read_file(sys.argv[1], 2**20)\nexcept DecodeError as e:\n    print(e)\n"
        )
        result = subprocess.run([sys.executable, "-c", code, locked], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "permission denied", result.stderr
