"""Every ```python block of README.md runs as written, each in a fresh interpreter (as doctests
run), in a folder that holds what the "Five minutes" commands leave behind: `photos/` (class
folders of JPEGs) and `photos-shards/` (a finished run of it at 224x224). A block that needs
another run makes it itself. The blocks that import torch run with the PyTorch tests
(test_torch_readme.py), where torch is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import shards
from shards.synthetic import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # each block runs in a process of its own


def readme_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block in README.md."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)
    ]


def needs_torch(code: str) -> bool:
    return re.search(r"^import torch|^from torch", code, flags=re.M) is not None


def five_minutes_folder(root: str) -> str:
    """photos/ and photos-shards/ in `root`, as `shards preprocess photos photos-shards --size 224`
    leaves them (written without Ray, which gives the same files)."""
    make_image_folder(os.path.join(root, "photos"), 30, classes=3, sizes=(240, 400), seed=3)
    shards.preprocess(os.path.join(root, "photos"), os.path.join(root, "photos-shards"), size=224, workers=0)
    return root


def run_block(folder: str, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return five_minutes_folder(str(tmp_path_factory.mktemp("readme")))


def test_the_readme_has_the_blocks_this_test_runs():
    blocks = readme_blocks()
    assert len(blocks) >= 4 and any(needs_torch(code) for _, code in blocks)


PLAIN = [block for block in readme_blocks() if not needs_torch(block[1])]


@pytest.mark.parametrize("line, code", PLAIN, ids=[f"line-{line}" for line, _ in PLAIN])
def test_a_python_block_of_the_readme_runs_as_written(folder, line, code):
    result = run_block(folder, code)
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr[-3000:]}"
