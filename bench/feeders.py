"""`python -m bench feeders`: feeding PyTorch and Keras 3 from shards, against their peers, in one run.

Rows, each measured in its own process on the same shards:
- PyTorch: `to_torch` through `DataLoader(batch_size=None, num_workers=2)` (a shuffled epoch)
  against a plain `np.load(mmap_mode="r")` copy loop over the shards in storage order (the
  memory-bandwidth bound) and Ray Data's `read_numpy(...).iter_torch_batches` on the same
  files, as images/s ratios, with the peak RssAnon of the whole process tree (the DataLoader's
  workers, or Ray's) from /proc.
- Keras 3: the default model trained for the same steps from `to_keras` on the JAX backend
  (TensorFlow blocked from importing) and from `to_tf` on TensorFlow, as images/s of the best
  epoch after the first (which compiles).
- With `--install-sizes`: du of fresh virtual environments of the base install, `[tf]` and
  `[torch]`.

The torch rows run under `--torch-python` (default: make test's .venv-3.11, which has the CPU
torch these machines keep on disk), the Keras rows under this Python (TensorFlow and JAX).
Prints the device: this is a CPU benchmark on a machine without a GPU, and says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from bench.procmem import PeakSampler, descendants, ray_worker_pids
from bench.readers import _timed, plain_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
BLOCK_TENSORFLOW = (
    "import sys\n"
    "class _Absent:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'tensorflow':\n"
    "            raise ModuleNotFoundError(name, name=name)\n"
    "sys.meta_path.insert(0, _Absent())\n"
)


# ---- measurements, one per process (`python -m bench.feeders measure NAME DEST ...`) ----


def copy_loop(dest: str) -> int:
    return plain_copy(dest)


def to_torch_loader(dest: str) -> int:
    import torch

    import shards

    feed = shards.open(dest).to_torch(BATCH, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(feed, batch_size=None, num_workers=2)
    return sum(len(images) for images, _ in loader)


def ray_data_torch(dest: str) -> int:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR")
    dataset = ray.data.read_numpy(sorted(glob.glob(os.path.join(dest, "shard-*.images.npy"))))
    return sum(len(batch["data"]) for batch in dataset.iter_torch_batches(batch_size=BATCH))


TORCH_FEEDERS = {"copy": copy_loop, "to_torch": to_torch_loader, "raydata_torch": ray_data_torch}


def measure_torch(name: str, dest: str, passes: int) -> dict:
    def tree() -> list[int | str]:
        return ["self", *descendants(), *(ray_worker_pids() if name == "raydata_torch" else [])]

    with PeakSampler({"tree": tree}, interval=0.02, summed=True) as peaks:
        seconds, images = _timed(passes, lambda: TORCH_FEEDERS[name](dest))
    return {"seconds": seconds, "images": images, "peak_rss_anon": peaks.peaks["tree"]}


def measure_keras(feeder: str, dest: str, epochs: int) -> dict:
    """The default model on this process's Keras backend, fed by `to_keras` or `to_tf`."""
    import keras

    import shards
    from shards.keras.model import build_model, compile_model

    keras.utils.set_random_seed(0)
    dataset = shards.open(dest)
    model = compile_model(build_model(dataset.shape, dataset.targets, "uint8"), 1e-3, dataset.targets)
    feed = dataset.to_keras(BATCH, shuffle=True) if feeder == "to_keras" else dataset.to_tf(BATCH, shuffle=True)
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            times.append(time.perf_counter() - self.started)

    model.fit(feed, epochs=epochs, verbose=0, callbacks=[EpochTimer()])
    steps = len(dataset) // BATCH + (1 if len(dataset) % BATCH else 0)
    return {
        "backend": keras.backend.backend(),
        "seconds": min(times[1:]),
        "images": len(dataset),
        "steps": steps,
        "tensorflow_loaded": sys.modules.get("tensorflow") is not None,
    }


# ---- the run ----


def run(python: str, *args: object, env: dict[str, str] | None = None) -> dict:
    command = [python, "-m", "bench.feeders", "measure", *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def make_dataset(work: str, images: int, size: int) -> str:
    import shards
    from shards.options import PreprocessOptions
    from shards.synthetic import make_image_folder

    dest = os.path.join(work, f"feeders-{images}-{size}")
    if os.path.exists(os.path.join(dest, "manifest.json")):
        return dest
    photos = os.path.join(work, f"feeders-photos-{images}")
    if not os.path.isdir(photos):
        make_image_folder(photos, images, classes=4, sizes=(size, 2 * size), seed=3)
    shards.preprocess(photos, dest, PreprocessOptions(size=size), mode="overwrite", worker_logs=False)
    return dest


def install_sizes(work: str, newest: str, torch_python: str) -> dict[str, int]:
    """du of a new virtual environment with the base install, [tf] and [torch] (non-editable)."""
    sizes = {}
    for name, python, first in (("base", newest, None), ("tf", newest, None), ("torch", torch_python, "torch==2.13.0")):
        folder = os.path.join(work, f"venv-{name}")
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([python, "-m", "venv", folder], check=True)
        pip = [os.path.join(folder, "bin", "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if first:
            subprocess.run([*pip, first], check=True)
        subprocess.run([*pip, ROOT if name == "base" else f"{ROOT}[{name}]"], check=True)
        sizes[name] = int(subprocess.run(["du", "-sb", folder], capture_output=True, text=True).stdout.split()[0])
        shutil.rmtree(folder, ignore_errors=True)
    return sizes


def table(results: dict) -> str:
    t, k = results["torch"], results["keras"]
    copy = t["copy"]["images_per_second"]
    lines = [
        f"device: {results['device']}; {results['images']} images of {results['size']}x{results['size']}x3 uint8",
        "",
        "| PyTorch feeder | images/s | vs copy loop | peak RssAnon (process tree) |",
        "|---|---|---|---|",
    ]
    names = {
        "copy": "np.load(mmap) copy loop",
        "to_torch": "to_torch, DataLoader 2 workers (shuffled)",
        "raydata_torch": "Ray Data iter_torch_batches",
    }
    for name, label in names.items():
        row = t[name]
        lines.append(
            f"| {label} | {row['images_per_second']:,.0f} | {row['images_per_second'] / copy:.2f}x | "
            f"{row['peak_rss_anon'] / 2**20:,.0f} MiB |"
        )
    lines.append(f"\nto_torch vs Ray Data: {t['to_torch_vs_raydata']:.2f}x")
    lines += ["", "| Keras 3 training, default model | images/s | steps |", "|---|---|---|"]
    for name, label in (("jax", "to_keras, KERAS_BACKEND=jax (no TensorFlow)"), ("tensorflow", "to_tf, TensorFlow")):
        lines.append(f"| {label} | {k[name]['images_per_second']:,.0f} | {k[name]['steps']} an epoch |")
    lines.append(f"\nJAX via to_keras vs TensorFlow via to_tf: {k['jax_vs_tf']:.2f}x")
    if "install_sizes" in results:
        lines += ["", "| install | du of the venv |", "|---|---|"]
        lines += [f"| {name} | {size / 2**20:,.0f} MiB |" for name, size in results["install_sizes"].items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench feeders", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=96, help="sample side (default 96)")
    parser.add_argument("--passes", type=int, default=3, help="timed epochs per reader (best counts)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per Keras feeder (the first compiles)")
    default_torch = os.path.join(ROOT, ".venv-3.11", "bin", "python")
    parser.add_argument("--torch-python", default=default_torch if os.path.exists(default_torch) else sys.executable)
    parser.add_argument("--install-sizes", action="store_true", help="also build base, [tf] and [torch] venvs")
    parser.add_argument("--work", default="/tmp/shards-bench")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    dest = make_dataset(args.work, args.images, args.size)
    results: dict = {"device": f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"}
    results.update(images=args.images, size=args.size, python=platform.python_version())
    torch_rows = {name: run(args.torch_python, "torch", name, dest, args.passes) for name in TORCH_FEEDERS}
    for row in torch_rows.values():
        row["images_per_second"] = row["images"] / row["seconds"]
    torch_rows["to_torch_vs_raydata"] = (
        torch_rows["to_torch"]["images_per_second"] / torch_rows["raydata_torch"]["images_per_second"]
    )
    copy = torch_rows["copy"]["images_per_second"]
    torch_rows["to_torch_vs_copy"] = torch_rows["to_torch"]["images_per_second"] / copy
    results["torch"] = torch_rows
    blocker = os.path.join(args.work, "no-tensorflow")
    os.makedirs(blocker, exist_ok=True)
    with open(os.path.join(blocker, "sitecustomize.py"), "w", encoding="utf-8") as handle:
        handle.write(BLOCK_TENSORFLOW)
    base = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    jax_env = dict(base, KERAS_BACKEND="jax", PYTHONPATH=blocker)
    tf_env = dict(base, TF_CPP_MIN_LOG_LEVEL="2")
    keras_rows = {
        "jax": run(sys.executable, "keras", "to_keras", dest, args.epochs, env=jax_env),
        "tensorflow": run(sys.executable, "keras", "to_tf", dest, args.epochs, env=tf_env),
    }
    for row in keras_rows.values():
        row["images_per_second"] = row["images"] / row["seconds"]
    keras_rows["jax_vs_tf"] = keras_rows["jax"]["images_per_second"] / keras_rows["tensorflow"]["images_per_second"]
    results["keras"] = keras_rows
    if args.install_sizes:
        results["install_sizes"] = install_sizes(args.work, sys.executable, args.torch_python)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "feeders.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    text = table(results)
    with open(os.path.join(args.out, "feeders.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        kind, name, dest, count = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
        result = measure_torch(name, dest, count) if kind == "torch" else measure_keras(name, dest, count)
        print("RESULT " + json.dumps(result), flush=True)
    else:
        sys.exit(main(sys.argv[1:]))
