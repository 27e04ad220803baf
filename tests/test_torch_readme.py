"""The ```python blocks of README.md that use PyTorch run as written (see test_readme.py)."""

from __future__ import annotations

import pytest

from tests.test_readme import five_minutes_folder, needs_torch, readme_blocks, run_block

pytestmark = [pytest.mark.torch, pytest.mark.slow]


TORCH = [block for block in readme_blocks() if needs_torch(block[1])]


@pytest.mark.parametrize("line, code", TORCH, ids=[f"line-{line}" for line, _ in TORCH])
def test_a_torch_block_of_the_readme_runs_as_written(tmp_path, line, code):
    result = run_block(five_minutes_folder(str(tmp_path)), code)
    assert result.returncode == 0, f"README.md line {line}:\n{result.stderr[-3000:]}"
