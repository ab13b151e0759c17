"""Choose a refiner setting on the validation split only: held-back normal training images with every defect kind.

The benchmark's test images are never read. For each data set, host and seed, the host is trained with the refiner
through anomalib's ``Engine`` on the embedded data's training images (the datamodule holds back its validation share
as in the benchmark); then every defect kind is painted on each of ``--images`` held-back normal images (this
package's generators, own seeds) and the deployed masks (``model(images)``: the thresholds calibrated on validation,
the decision rule) are scored with the per-image Dice for each value of the swept refiner argument. Hosts, image size
and data are those of the ``realistic_refiners`` profile.

Example:
    HF_HUB_OFFLINE=1 python benchmarks/validation_sweep.py --argument extent_contrast --values host none 0.5 1.0 \
        --output benchmarks/results/validation_sweep/extent_contrast.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from anomalib_pixelrefine.benchmark.profiles import REALISTIC_HOST_SPECS, REALISTIC_REFINERS_PROFILE

#: The hosts of the refiner benchmark by class name, and its image size and data build arguments.
HOSTS: dict[str, dict[str, Any]] = {spec["class_path"]: spec["init_args"] for spec in REALISTIC_HOST_SPECS}
IMAGE_SIZE: int = REALISTIC_REFINERS_PROFILE["image_size"]
_DATA_ARGS = REALISTIC_REFINERS_PROFILE["benchmark"]["data"]["init_args"]
BUILD_ARGS: dict[str, int] = {key: _DATA_ARGS[key] for key in ("image_size", "n_train", "n_test_good", "n_test_defect")}


def _value(text: str) -> float | str | None:
    """``none`` -> None, ``host`` (the host alone: refinement off) stays a string, else a float."""
    if text.lower() in {"none", "host"}:
        return None if text.lower() == "none" else "host"
    return float(text)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sweep ``args.argument`` over ``args.values``; per-image Dice by defect kind on validation images."""
    import anomalib.models
    from anomalib.data.utils import read_image
    from anomalib.engine import Engine
    from lightning import seed_everything

    from anomalib_pixelrefine.benchmark.job import resolve_post_processor
    from anomalib_pixelrefine.data import DEFAULT_DEFECTS, build_default_benchmark, default_datamodule
    from anomalib_pixelrefine.data.generators import defect_generator
    from anomalib_pixelrefine.metrics.deployed import per_image_mask_stats

    rows = []
    for category in args.categories:
        path = build_default_benchmark(args.root, categories=[category], **BUILD_ARGS)[category]
        for host, seed in ((h, s) for h in args.hosts for s in args.seeds):
            seed_everything(seed, workers=True)
            datamodule = default_datamodule(path, seed=seed)
            model_cls = getattr(anomalib.models, host)
            post = resolve_post_processor(args.refiner)
            model = model_cls(
                **HOSTS[host],
                post_processor=post,
                pre_processor=model_cls.configure_pre_processor(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
                visualizer=False,
                evaluator=False,
            )
            engine = Engine(logger=False, default_root_dir=args.workdir, max_epochs=1, accelerator="cpu", devices=1)
            engine.fit(model=model, datamodule=datamodule)
            normal = datamodule.val_data.samples
            normal = normal[normal.label_index == 0].image_path.tolist()[: args.images]
            clean = torch.stack([read_image(p, as_tensor=True) for p in normal])
            model.eval()
            for value in args.values:
                model.post_processor.enable_refinement = value != "host"
                for key, fixed in args.set:
                    setattr(model.post_processor, key, fixed)
                if value != "host":
                    setattr(model.post_processor, args.argument, value)
                start = time.perf_counter()
                for index, kind in enumerate(DEFAULT_DEFECTS):
                    images, masks = defect_generator(kind, seed=10_000 + 97 * seed + index)(clean)
                    with torch.no_grad():
                        out = model(images)
                    dice = per_image_mask_stats(out.pred_mask.reshape(masks.shape), masks.bool())["dice"]
                    for i, d in enumerate(dice.tolist()):
                        area = float(masks[i].float().mean())
                        rows.append(
                            {"dataset": category, "host": host, "seed": seed, "kind": kind, "image": i, "area": area,
                             "dice": d, "setting": str(value)}
                        )  # fmt: skip
                print(f"{category} {host} s{seed} {args.argument}={value}: {time.perf_counter() - start:.1f} s")
    return rows


def summary(frame: Any, meta: dict[str, Any]) -> str:
    """Mean per-image Dice per setting: by kind, by data set and host, and by data set, host and kind."""
    by_kind = frame.pivot_table(index="kind", columns="setting", values="dice", aggfunc="mean")
    by_kind.loc["MEAN"] = frame.groupby("setting").dice.mean()
    by_set = frame.pivot_table(index=["dataset", "host"], columns="setting", values="dice", aggfunc="mean")
    detail = frame.pivot_table(index=["dataset", "host", "kind"], columns="setting", values="dice", aggfunc="mean")
    head = "\n".join(f"{key}: {value}" for key, value in meta.items())
    tables = (table.round(3).to_string() for table in (by_kind, by_set, detail))
    return head + "\n\nmean per-image Dice (validation images only)\n\n" + "\n\n".join(tables)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refiner", default="f2pad")
    parser.add_argument("--argument", default="extent_ratio")
    parser.add_argument("--values", nargs="+", type=_value, default=["host", None, 0.05, 0.1, 0.15])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        type=lambda text: (text.split("=")[0], _value(text.split("=")[1])),
        help="fixed refiner attributes, key=value",
    )
    parser.add_argument("--categories", nargs="+", default=["brick", "elpv"])
    parser.add_argument("--hosts", nargs="+", default=list(HOSTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--images", type=int, default=8, help="held-back normal images per job (x every kind)")
    parser.add_argument("--root", default="./datasets/pixelrefine_realistic")
    parser.add_argument("--workdir", default="./results/validation_sweep")
    parser.add_argument("--output", type=Path, default=Path("./results/validation_sweep/sweep.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    meta = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    meta["load_average_start"] = os.getloadavg()
    frame = pd.DataFrame(run(args))
    meta["load_average_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    frame.round(4).to_csv(args.output, index=False)
    table = summary(frame, meta)
    args.output.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
