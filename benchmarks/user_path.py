"""The README's own-folder path, timed: train -> test -> predict -> export -> TorchInferencer, offline.

Builds a user's folder (40 normal + 10 defective ELPV solar cells at 256 px, plain PNGs without any marker of this
package; defects of five kinds from this package's generators with their masks), then runs the README's commands as a
user types them (``HF_HUB_OFFLINE=1``, no other variable) for PatchCore + F2PAD and for Pni, and reports per command
the wall time, the load average, whether it printed a traceback or a hub retry, and, through anomalib's
``TorchInferencer`` on the exported model, how many defective images get a non-empty mask and their mean Dice.

Usage:
    python benchmarks/user_path.py --workdir /tmp/user_path
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

DATA = (
    "--data SyntheticValFolder --data.name tiles --data.root ./datasets/tiles --data.normal_dir train/good "
    "--data.abnormal_dir test/crack --data.mask_dir ground_truth/crack"
)
MODELS = {
    "Patchcore+F2PAD": (
        "Patchcore",
        '--model.backbone tf_efficientnet_lite0 --model.layers "[blocks.2, blocks.4]" --post_processor f2pad',
    ),
    "Pni": ("Pni", ""),
}
KINDS = ["crack", "scratch", "stain", "burn", "cut_paste_color"]


def build_folder(root: Path, image_size: int = 256) -> None:
    """40 normal + 10 defective ELPV cells as plain PNGs in anomalib's Folder layout."""
    import torch
    from PIL import Image

    from anomalib_pixelrefine.data.folder import _load_elpv, _to_tensor, defect_generator

    images = _to_tensor(_load_elpv(50, "mono", torch.Generator().manual_seed(123)), image_size)
    for sub in ("train/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def save(tensor: torch.Tensor, path: Path) -> None:
        array = (tensor.clamp(0, 1) * 255).round().byte()
        Image.fromarray(array.permute(1, 2, 0).numpy() if array.ndim == 3 else array.numpy()).save(path)

    for index in range(40):
        save(images[index], root / f"train/good/{index:03d}.png")
    for index in range(10):
        defective, mask = defect_generator(KINDS[index % len(KINDS)], seed=index)(images[40 + index : 41 + index])
        save(defective[0], root / f"test/crack/{index:03d}.png")
        save(mask.reshape(mask.shape[-2:]), root / f"ground_truth/crack/{index:03d}_mask.png")


def run(command: str, cwd: Path) -> dict:
    """Run one command as a user would; wall time, load and what it printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUST_REMOTE_CODE": "1"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    return {
        "command": command,
        "rc": result.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_start": round(load, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "traceback": "Traceback" in output,
        "hub_retry": bool(re.search(r"retry|Retrying|HTTPSConnection", output, re.IGNORECASE)),
        "lines": output.count("\n"),
        "tail": output[-600:] if result.returncode else "",
    }


def inferencer_masks(model_path: Path, folder: Path) -> dict:
    """Non-empty masks and mean Dice of the exported model on the defective images (TorchInferencer)."""
    import numpy as np
    from anomalib.deploy import TorchInferencer
    from PIL import Image

    os.environ["TRUST_REMOTE_CODE"] = "1"
    inferencer = TorchInferencer(path=model_path, device="cpu")
    non_empty, dice, agree = 0, [], 0
    for image in sorted((folder / "test/crack").glob("*.png")):
        prediction = inferencer.predict(image)
        mask = np.asarray(prediction.pred_mask).reshape(-1) > 0
        truth = (
            np.asarray(
                Image.open(folder / "ground_truth/crack" / f"{image.stem}_mask.png").resize(
                    prediction.pred_mask.shape[-2:][::-1], Image.NEAREST
                )
            ).reshape(-1)
            > 0
        )
        non_empty += int(mask.any())
        agree += int(bool(prediction.pred_label) == bool(mask.any()))
        dice.append(2 * (mask & truth).sum() / max(1, mask.sum() + truth.sum()))
    mean_dice = round(float(np.mean(dice)), 3)
    return {"non_empty": non_empty, "images": len(dice), "mean_dice": mean_dice, "label_agrees": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="an empty folder for the data and the runs")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    build_folder(workdir / "datasets" / "tiles")
    report = {}
    for name, (model, extra) in MODELS.items():
        ckpt = f"results/{model}/tiles/latest/weights/lightning/model.ckpt"
        commands = [
            f"pixelrefine train --model {model} {extra} {DATA}",
            f"pixelrefine test --model {model} {DATA} --ckpt_path {ckpt}",
            f"pixelrefine predict --model {model} --data ./datasets/tiles/test/crack --ckpt_path {ckpt}",
            f"pixelrefine export --model {model} --export_type torch --ckpt_path {ckpt}",
        ]
        steps = [run(command, workdir) for command in commands]
        exported = (workdir / ckpt).resolve().parents[2] / "weights" / "torch" / "model.pt"
        started, load = time.perf_counter(), os.getloadavg()[0]
        masks = inferencer_masks(exported, workdir / "datasets" / "tiles") if exported.is_file() else {}
        masks.update(wall_s=round(time.perf_counter() - started, 1), load_start=round(load, 2))
        report[name] = {"steps": steps, "torch_inferencer": masks}
        print(json.dumps({name: report[name]}, indent=1))
    (workdir / "user_path.json").write_text(json.dumps(report, indent=1))
    print(f"{shlex.join(sys.argv)} -> {workdir / 'user_path.json'}")


if __name__ == "__main__":
    main()
