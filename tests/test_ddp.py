"""Refinement inside Lightning test/predict under ``strategy="ddp"`` (2 CPU processes, gloo): images are split."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib_pixelrefine.post_processing import F2PAD

    class DdpPatchcore(Patchcore):
        # anomalib pins memory-bank models to devices=1; lift that to shard test/predict across 2 processes.

        @property
        def trainer_arguments(self):
            args = dict(super().trainer_arguments)
            args.pop("devices", None)
            return args


    torch.set_num_threads(1)
    root, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    datamodule = MVTecAD(root=root, category="gravel", num_workers=0, train_batch_size=4, eval_batch_size=2)
    model = DdpPatchcore(
        backbone="resnet18",
        layers=["layer2", "layer3"],
        pre_trained=False,
        coreset_sampling_ratio=0.5,
        pre_processor=Patchcore.configure_pre_processor(image_size=(64, 64)),
        post_processor=F2PAD(max_iters=5),
    )
    engine = Engine(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, max_epochs=1, default_root_dir=out,
        enable_progress_bar=False,
    )
    engine.fit(model, datamodule=datamodule)
    rank = engine.trainer.global_rank
    refiner = model.post_processor
    refiner.refined_images = 0
    engine.test(model, datamodule=datamodule)
    tested = refiner.refined_images
    refiner.refined_images = 0
    predictions = engine.predict(model, datamodule=datamodule)
    paths = [p for batch in predictions for p in batch.image_path]
    masks_ok = all(b.pred_mask is not None and b.pred_mask.dtype == torch.bool for b in predictions)
    result = {
        "rank": rank,
        "world_size": engine.trainer.world_size,
        "tested": tested,
        "predicted": refiner.refined_images,
        "paths": paths,
        "masks_ok": masks_ok,
        "prior_fitted": bool(refiner.prior_fitted),
    }
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    """
)


def test_ddp_two_cpu_processes_refine_every_image(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_mvtec_root), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in results)
    assert all(r["prior_fitted"] and r["masks_ok"] for r in results)
    expected = {str(p) for p in (tiny_mvtec_root / "gravel" / "test").rglob("*.png")}
    seen = {p for r in results for p in r["paths"]}
    assert seen == expected  # every test image predicted (and refined) by one of the two processes
    assert all(0 < r["predicted"] <= len(expected) for r in results)  # both processes refined their share
    assert all(r["predicted"] == len(r["paths"]) for r in results)
    assert all(r["tested"] > 0 for r in results)
