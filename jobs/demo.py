"""`make demo`: make a small image set, preprocess it on an embedded Ray, train on the stream.

Everything happens under one folder (default ./demo-data): its images are made by the first run
and kept, the shards and the model are replaced on each run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time

from shards import cli
from shards.synthetic import make_image_folder


def make_photos(folder: str, count: int) -> None:
    """`count` images in 4 class folders, made by one process a core: rendering them is most of a
    first run's extra time (~20 s for 400 on one core), so it is spread like the preprocess."""
    processes = max(1, min(os.cpu_count() or 1, 8, count // 50 or 1))
    bounds = [count * part // processes for part in range(processes + 1)]
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        made = [
            pool.submit(
                make_image_folder,
                folder,
                bounds[part + 1] - bounds[part],
                classes=4,
                sizes=(200, 900),
                formats=("jpeg", "jpeg", "png", "webp"),
                seed=part,
                first_index=bounds[part],
            )
            for part in range(processes)
        ]
        for future in made:
            future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="demo-data")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    photos, out = os.path.join(args.folder, "photos"), os.path.join(args.folder, "shards")

    planted = os.path.join(photos, "class_0", "broken.jpg")
    if not os.path.isdir(photos):
        print(f"making {args.images} JPEG/PNG/WebP images in 4 classes under {photos} ...")
        make_photos(photos, args.images)
        with open(planted, "wb") as handle:
            handle.write(b"\xff\xd8\xff\xe0 this JPEG stops here")
    print(f"planted {planted}: a JPEG cut off after its header, to show how a bad input is handled")
    print(f"\n$ shards preprocess {photos} {out} --size 128 --shard-size 4MiB --overwrite")
    status = cli.main(["preprocess", photos, out, "--size", "128", "--shard-size", "4MiB", "--overwrite"])
    if status:
        return status
    with open(os.path.join(out, "rejects.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            reject = json.loads(line)
            print(f"rejected, not fatal: {reject['source']}: {reject['reason']} (see {out}/rejects.jsonl)")
    print(f"\n$ shards inspect {out}")
    cli.main(["inspect", out])

    import shards

    dataset = shards.open(out)
    started = time.perf_counter()
    seen = 0
    for images, _ in dataset.batches(64, shuffle=True, seed=1):
        seen += len(images)
    seconds = time.perf_counter() - started
    print(
        f"\nstreamed one shuffled epoch: {seen} samples of {list(dataset.shape)} {dataset.dtype} "
        f"in {seconds * 1000:.0f} ms ({seen / seconds:,.0f} samples/s)"
    )

    from shards.keras.options import TrainOptions
    from shards.trainer import run_training

    model_path = os.path.join(args.folder, "model.keras")
    print(f"\ntraining a small CNN for {args.epochs} epochs in a Ray trainer actor, fed by the stream ...")
    report = run_training(
        out,
        TrainOptions(
            epochs=args.epochs,
            batch_size=32,
            output=model_path,
            validation_split=0.2,
            augment=("flip",),
            overwrite=True,  # the demo's folder is its own: each run replaces it
        ),
        worker_logs=False,  # the epochs are printed below, once (as `shards train` does without -v)
    )
    for epoch in report["epochs"]:
        print(
            f"epoch {epoch['epoch'] + 1}: loss {epoch['loss']:.3f}, accuracy {epoch['accuracy']:.3f}, "
            f"val_accuracy {epoch['val_accuracy']:.3f}, {epoch['images_per_second']:,.0f} images/s"
        )
    print(f"model written to {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
