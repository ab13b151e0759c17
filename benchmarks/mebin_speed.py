"""anomalib's MEBinPostProcessor as shipped vs this package's FastMEBinPostProcessor: time and identical masks.

PatchCore (pretrained tf_efficientnet_lite0, ``blocks.2``/``blocks.4``) is fitted with anomalib's default
post-processor on the embedded brick data (128 px); the raw anomaly maps and scores of the first ``--n_images`` test
images are then given, as one batch, to both MEBin post-processors carrying the fitted normalisation statistics
(``forward``, anomalib's defaults), under the ``pixelrefine`` commands' thread policy. Writes
``<output_dir>/mebin_speed.json``: seconds per image of each, the load averages before and after each, and whether
``pred_mask`` (and the labels, scores, maps) are bit-identical.

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/mebin_speed.py [--n_images 10] [--output_dir benchmarks/results/mebin_speed]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from anomalib_pixelrefine.launcher import configure_threads

configure_threads()  # the commands' thread policy (one thread, passive waiting), before torch is imported

import anomalib_pixelrefine  # noqa: E402, F401  (allocator settings)


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def main() -> None:
    """Fit the host, time both post-processors on the same maps, compare their outputs, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_images", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--n_train", type=int, default=20)
    parser.add_argument("--output_dir", default="benchmarks/results/mebin_speed")
    args = parser.parse_args()

    import torch
    from anomalib.data import InferenceBatch
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib.post_processing import MEBinPostProcessor

    from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule
    from anomalib_pixelrefine.post_processing import FastMEBinPostProcessor
    from anomalib_pixelrefine.weights import ensure_offline_weights

    if not ensure_offline_weights("tf_efficientnet_lite0"):
        raise SystemExit("mebin_speed: needs the offline weights (pixelrefine weights --install true)")
    started = time.perf_counter()
    size = args.image_size
    with tempfile.TemporaryDirectory() as root:
        path = build_default_benchmark(
            root, categories=["brick"], image_size=size, n_train=args.n_train, n_test_good=4, n_test_defect=1, seed=0
        )["brick"]
        datamodule = default_datamodule(path, train_batch_size=16, eval_batch_size=16, seed=0)
        model = Patchcore(
            backbone="tf_efficientnet_lite0",
            layers=["blocks.2", "blocks.4"],
            pre_trained=True,
            coreset_sampling_ratio=0.1,
            pre_processor=Patchcore.configure_pre_processor(image_size=(size, size)),
            visualizer=False,
        )
        engine = Engine(default_root_dir=os.path.join(root, "results"), accelerator="cpu", devices=1, logger=False)
        engine.fit(model=model, datamodule=datamodule)
        datamodule.setup("test")
        images = torch.stack([datamodule.test_data[i].image for i in range(args.n_images)])
        model.eval()
        with torch.no_grad():
            raw = model.model(model.pre_processor(images))
    maps = InferenceBatch(pred_score=raw.pred_score, anomaly_map=raw.anomaly_map)
    state = model.post_processor.state_dict()  # fitted thresholds and normalisation statistics

    outputs, timing = {}, {}
    for name, cls in (("anomalib_as_shipped", MEBinPostProcessor), ("fast", FastMEBinPostProcessor)):
        post = cls()
        post.load_state_dict(state)
        load_before = _load()
        start = time.perf_counter()
        with torch.no_grad():
            outputs[name] = post(maps)
        seconds = time.perf_counter() - start
        timing[name] = {
            "seconds": round(seconds, 3),
            "s_per_image": round(seconds / args.n_images, 4),
            "load_before": load_before,
            "load_after": _load(),
        }
        print(name, timing[name], flush=True)
    shipped, fast = outputs["anomalib_as_shipped"], outputs["fast"]
    identical = {
        field: bool(torch.equal(getattr(shipped, field), getattr(fast, field)))
        for field in ("pred_mask", "pred_label", "pred_score", "anomaly_map")
    }
    result = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "host": "Patchcore(tf_efficientnet_lite0, blocks.2/blocks.4, pretrained, coreset 0.1), brick",
        "image_size": size,
        "n_train": args.n_train,
        "n_images": args.n_images,
        "batch": "all n_images in one batch (MEBin's sweep range depends on the batch)",
        "post_processor_args": "anomalib defaults (sample_rate 4, min_interval_len 4, erode True, kernel_size 6)",
        "torch_threads": torch.get_num_threads(),
        "timing": timing,
        "speedup": round(timing["anomalib_as_shipped"]["seconds"] / timing["fast"]["seconds"], 1),
        "identical": identical,
        "mask_pixels": int(fast.pred_mask.sum()),
        "non_empty_masks": int(fast.pred_mask.flatten(1).any(1).sum()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "wall_s": round(time.perf_counter() - started, 1),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mebin_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
