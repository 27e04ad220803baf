"""The package as users get it: an sdist and a wheel built from this tree, the wheel installed
into a new virtual environment, and the API reference generated from the docstrings."""

import glob
import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata

import pytest

import shards
from shards.synthetic import make_image_folder
from shards.version import DISTRIBUTION

pytestmark = pytest.mark.slow  # starts Ray clusters, jobs or other processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist"))
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheels, sdists = glob.glob(f"{out}/*.whl"), glob.glob(f"{out}/*.tar.gz")
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(out)
    assert os.path.basename(wheels[0]).startswith(f"{DISTRIBUTION}-{metadata.version(DISTRIBUTION)}-")
    return wheels[0]


@pytest.fixture(scope="module")
def fresh_python(wheel, tmp_path_factory):
    """A new virtual environment holding only the wheel. Its dependencies come from this test
    environment through a path line (no network, no second 2 GB install); a plain path line
    does not run this environment's .pth files, so its editable install of shards stays out."""
    folder = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = str(folder / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(site, "test-dependencies.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return folder


def test_the_wheel_asks_for_no_framework_and_offers_each_as_an_extra(wheel):
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    headers = [line.split(": ", 1) for line in metadata.splitlines() if ": " in line]
    required = [value for key, value in headers if key == "Requires-Dist"]
    base = [value.split(";")[0].strip() for value in required if "extra ==" not in value]
    frameworks = ("tensorflow", "keras", "torch", "jax")
    assert base and not [r for r in base if r.lower().startswith(frameworks)], base
    extras = {value for key, value in headers if key == "Provides-Extra"}
    assert {"tf", "gpu", "keras", "jax", "torch"} <= extras, extras
    assert any(r.startswith("tensorflow[and-cuda]") and 'extra == "gpu"' in r for r in required)
    python = next(value for key, value in headers if key == "Requires-Python")
    assert sorted(python.replace(" ", "").split(",")) == ["<3.14", ">=3.10"], python
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)} <= {
        value for key, value in headers if key == "Classifier"
    }


def test_the_wheel_installs_and_preprocesses_from_a_fresh_environment(fresh_python, tmp_path, absent):
    # No framework can be imported there, as in a plain `pip install imageshards`.
    env = {k: v for k, v in absent("tensorflow", "keras", "torch", "jax").items() if k != "RAY_ADDRESS"}
    command = str(fresh_python / "bin" / "shards")
    python = str(fresh_python / "bin" / "python")

    version = subprocess.run([command, "--version"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"shards {shards.__version__} ({DISTRIBUTION})"

    where = subprocess.run(
        [
            python,
            "-c",
            "import json, os, shards; print(json.dumps([shards.__file__, "
            "shards.__version__, os.path.exists(os.path.join(os.path.dirname(shards.__file__), "
            "'py.typed'))]))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    path, installed, typed = json.loads(where.stdout)
    assert path.startswith(str(fresh_python)) and installed == shards.__version__ and typed

    make_image_folder(str(tmp_path / "src"), 12, classes=2, sizes=(30, 60), seed=1)
    run = subprocess.run(
        [command, "preprocess", str(tmp_path / "src"), str(tmp_path / "out"), "--size", "16"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    read = subprocess.run(
        [
            python,
            "-c",
            "import shards; ds = shards.open('out'); print(len(ds), ds.shape, len(next(iter(ds.batches(5)))[0]))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert read.stdout.split() == ["12", "(16,", "16,", "3)", "5"], read.stderr


def test_the_api_reference_documents_every_public_name(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pdoc",
            "--docformat",
            "google",
            "--output-directory",
            str(tmp_path),
            "shards",
            "shards.dataset",  # the reader and the feeds ShardDataset inherits, so its page lists them
            "shards.read.dataset",
            "shards.read.remote",
            "shards.tf.adapters",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    top = (tmp_path / "shards.html").read_text()
    for name in shards.__all__:
        assert f'id="{name}"' in top, name
    for name in ("ShardDataset.batches", "ShardDataset.to_tf", "ShardDataset.split", "BatchStream.state"):
        assert f'id="{name}"' in top, name
    adapters = (tmp_path / "shards" / "tf" / "adapters.html").read_text()
    for name in ("to_tf", "ShardsPyDataset"):
        assert f'id="{name}"' in adapters, name
