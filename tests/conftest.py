"""Shared fixtures: one local Ray for the session, image sets made on the fly in tmp folders."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from shards.synthetic import make_image_folder, photo_like


@pytest.fixture(scope="session", autouse=True)
def _node_cache_in_the_sessions_tmp(tmp_path_factory):
    """Object-storage reads share a node-wide cache folder ($SHARDS_CACHE_DIR); the suite's is
    its own, under its tmp folder, inherited by the processes it starts."""
    saved = os.environ.get("SHARDS_CACHE_DIR")
    os.environ["SHARDS_CACHE_DIR"] = str(tmp_path_factory.mktemp("node-cache"))
    yield
    if saved is None:
        os.environ.pop("SHARDS_CACHE_DIR", None)
    else:
        os.environ["SHARDS_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole session (as Ray's own ray_start_regular_shared does)."""
    import ray

    # A new local cluster, even if another one (a test's `ray start`) runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> str:
    """A labelled folder: 3 classes, 90 JPEG/PNG/WebP files of mixed sizes and aspects."""
    root = str(tmp_path_factory.mktemp("photos"))
    make_image_folder(root, 90, classes=3, sizes=(48, 400), formats=("jpeg", "png", "webp"), seed=7)
    return root


def add_bad_files(folder: str) -> dict[str, str]:
    """Write broken inputs into `folder`; returns file name -> the reason words expected."""
    os.makedirs(folder, exist_ok=True)
    good = photo_like(np.random.default_rng(1), 120, 160, (200, 60, 50))
    Image.fromarray(good).save(os.path.join(folder, "whole.jpg"), quality=90)
    data = open(os.path.join(folder, "whole.jpg"), "rb").read()
    os.remove(os.path.join(folder, "whole.jpg"))
    with open(os.path.join(folder, "truncated.jpg"), "wb") as handle:
        handle.write(data[: len(data) // 2])
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    with open(os.path.join(folder, "notes.png"), "wb") as handle:
        handle.write(b"this is a text file with an image extension\n" * 20)
    bomb = Image.new("L", (12000, 12000))  # 144 Mpx: over the 89 Mpx limit, tiny once compressed
    bomb.save(os.path.join(folder, "bomb.png"), optimize=False)
    return {
        "truncated.jpg": "truncated",
        "empty.jpg": "empty file",
        "notes.png": "not an image",
        "bomb.png": "decompression bomb",
    }


def wait_for_finished_shards(dest: str, count: int, driver: subprocess.Popen, timeout: float = 180) -> list[str]:
    """Wait until a running preprocess has left `count` shard receipts (or stopped); return them."""
    parts = os.path.join(dest, ".parts")
    deadline = time.monotonic() + timeout
    finished: list[str] = []
    while time.monotonic() < deadline and driver.poll() is None:
        finished = (
            sorted(n[: -len(".json")] for n in os.listdir(parts) if n.startswith("shard-"))
            if os.path.isdir(parts)
            else []
        )
        if len(finished) >= count:
            break
        time.sleep(0.01)
    return finished


BLOCKER = """import os, sys


class _Absent:
    # `import NAME` raises ModuleNotFoundError, as when NAME is not installed (and, unlike a None
    # in sys.modules, `"NAME" in sys.modules` stays False, as libraries test it).
    names = set(filter(None, os.environ.get("SHARDS_TEST_ABSENT", "").split(",")))

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, _Absent())
"""


@pytest.fixture(scope="session")
def absent(tmp_path_factory):
    """`absent("tensorflow", "keras")` -> an environment for subprocesses (and the Ray workers
    they start) in which those packages cannot be imported, as in an install without them: a
    sitecustomize on PYTHONPATH marks them missing before any code runs."""
    folder = tmp_path_factory.mktemp("absent")
    (folder / "sitecustomize.py").write_text(BLOCKER)

    def environment(*names: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KERAS_BACKEND")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
        env["SHARDS_TEST_ABSENT"] = ",".join(names)
        env.update(extra)
        return env

    return environment


def pytest_collection_modifyitems(items):
    """Every test that needs the session's Ray (directly or through a fixture that runs a
    preprocess) is `slow`, as are those marked so by hand for the subprocesses they start:
    `make test-fast` leaves them out for the inner loop; CI runs them all."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_ray(request):
    """A test that is not `slow` must not start Ray: one that did (a preprocess without
    `workers=0`, a trainer) would slip an embedded cluster into the inner loop and the oldest
    Python's run, and make the session's `ray.init` fail after it."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import sys

    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    if not before and "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
        pytest.fail("this test started Ray: give it the ray_cluster fixture or mark it slow")
