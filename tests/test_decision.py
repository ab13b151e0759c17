"""The decision rule (label = mask non-empty, no mask below the image threshold) and the false-alarm budget.

Every path a user meets: ``Engine.test``, ``Engine.predict``, the module's ``forward`` and ``TorchInferencer`` on a
torch export, for this package's models (default ``DecisionPostProcessor``) and a refiner; budgets set on the
held-back normal images of the synthetic validation split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from anomalib.deploy import ExportType, TorchInferencer
from anomalib.engine import Engine
from anomalib.models import Patchcore
from conftest import tiny_embedded_data

from anomalib_pixelrefine.benchmark import run_benchmark
from anomalib_pixelrefine.cli import translate_post_processor_args
from anomalib_pixelrefine.data import SyntheticValMVTecAD, default_datamodule
from anomalib_pixelrefine.models import Pae
from anomalib_pixelrefine.post_processing import F2PAD, DecisionPostProcessor
from anomalib_pixelrefine.post_processing.decision import (
    agree,
    area_threshold,
    budget_image_threshold,
    false_alarm_threshold,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_false_alarm_threshold_is_the_conformal_order_statistic() -> None:
    scores = torch.randperm(200).float()
    for rate in (0.0, 0.01, 0.05, 0.1, 0.333):
        threshold = false_alarm_threshold(scores, rate)
        k = max(int(rate * 201 + 1e-9), 1)  # the k-th largest: a new normal image is above it w.p. k / (n + 1)
        assert int((scores > threshold).sum()) == k - 1
        assert rate == 0 or k / 201 <= rate
    assert false_alarm_threshold(scores, 0.0) == scores.max()


def test_false_alarm_budget_holds_on_new_normal_images() -> None:
    # 4000 draws of 40 held-back normal scores and one new normal image from the same distribution: the share of new
    # images above the threshold is the budget's k / (n + 1) = 2 / 41, within 3 standard errors of 0.05. The former
    # rule (floor(rate n) + 1-th largest: the 3rd of 40) gave 3 / 41 = 0.073.
    generator = torch.Generator().manual_seed(0)
    draws = torch.randn(4000, 41, generator=generator)
    thresholds = torch.stack([false_alarm_threshold(row[:40], 0.05) for row in draws])
    exceed = (draws[:, 40] > thresholds).float().mean().item()
    assert exceed <= 0.05 + 3 * (0.05 * 0.95 / 4000) ** 0.5


def test_too_few_normal_images_warn_and_give_their_maximum(caplog: pytest.LogCaptureFixture) -> None:
    scores = torch.tensor([0.1, 0.5, 0.3])
    with caplog.at_level(logging.WARNING):
        assert false_alarm_threshold(scores, 0.05) == 0.5
    assert "only 3 held-back normal images for max_false_alarm_rate=0.05 (at least 19 needed)" in caplog.text
    with pytest.raises(ValueError, match="no held-back normal image score"):
        false_alarm_threshold(torch.tensor([float("nan")]), 0.05)
    with pytest.raises(ValueError, match="max_false_alarm_rate"):
        DecisionPostProcessor(max_false_alarm_rate=1.5)


def test_area_threshold_keeps_the_mean_area_under_the_budget() -> None:
    maps = torch.rand(4, 32, 32)
    maps[2:] = -torch.inf  # images below the image threshold never count
    threshold = area_threshold(maps, 0.01)
    assert (maps > threshold).float().mean() <= 0.01
    assert (maps >= threshold).float().mean() > 0.01 - 1 / maps.numel()


def test_area_budget_raises_the_pixel_threshold_on_normal_images_above_the_gate() -> None:
    post = DecisionPostProcessor(max_false_alarm_rate=0.5, max_false_alarm_area=0.01)
    post._pixel_threshold.fill_(0.2)  # as calibrated by anomalib's F1 on validation
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 1, 16, 16, generator=generator)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    scores = maps.flatten(1).amax(1)
    post.collect_normals(SimpleNamespace(gt_label=labels, pred_score=scores, anomaly_map=maps))
    post.apply_budget()
    normal = scores[:6]
    assert int((normal > post._image_threshold).sum()) == 2  # the 3rd largest of 6 (k = floor(0.5 * 7)): 2 above
    above = maps[:6][normal > post._image_threshold]
    assert (above > post._pixel_threshold).sum() / (6 * 16 * 16) <= 0.01
    assert float(post._pixel_threshold) > 0.2


def test_agree_clears_masks_below_the_image_threshold_and_labels_by_the_mask() -> None:
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 1] = mask[1, 0, 2, 2] = True
    label, gated = agree(torch.tensor([True, False, True]), mask)
    assert label.tolist() == [True, False, False]
    assert gated[0].any()
    assert not gated[1].any()
    assert not gated[2].any()


def test_cli_reaches_the_budget() -> None:
    args = ["fit", "--model", "Pae", "--post_processor", "decision", "--post_processor.max_false_alarm_rate", "0.01"]
    out = translate_post_processor_args(args)
    assert out[-4:] == [
        "--model.post_processor",
        "anomalib_pixelrefine.post_processing.DecisionPostProcessor",
        "--model.post_processor.init_args.max_false_alarm_rate",
        "0.01",
    ]
    # The option alone sets the budget of the decision post-processor (any model).
    assert (
        translate_post_processor_args(["fit", "--model", "Padim", "--post_processor.max_false_alarm_rate", "0.01"])[-4:]
        == out[-4:]
    )


def _check_rule(pred_label: torch.Tensor, pred_mask: torch.Tensor, pred_score: torch.Tensor) -> None:
    """Label = mask non-empty; no mask pixel on an image at or below the (normalised) image threshold."""
    assert pred_label is not None
    assert pred_mask is not None
    nonempty = pred_mask.reshape(len(pred_mask), -1).any(1)
    assert torch.equal(pred_label.reshape(-1).bool(), nonempty)
    assert not nonempty[pred_score.reshape(-1) <= 0.5].any()


def _export_and_infer(engine: Engine, model: object, root: Path, images: torch.Tensor) -> None:
    path = engine.export(model=model, export_type=ExportType.TORCH, export_root=root)
    result = TorchInferencer(path=path, device="cpu").predict(images)
    _check_rule(result.pred_label, result.pred_mask, result.pred_score)


@pytest.fixture(scope="module")
def datamodule(tiny_mvtec_path: Path) -> object:
    return default_datamodule(tiny_mvtec_path, train_batch_size=4, eval_batch_size=4, seed=0, val_split_ratio=0.5)


def _run_paths(model: object, datamodule: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # our own pickled export
    torch.manual_seed(0)
    engine = Engine(logger=False, default_root_dir=tmp_path, max_epochs=1, devices=1, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)
    post = model.post_processor
    normal = post.val_normal_scores
    assert normal is not None
    assert len(normal) == 4
    # 4 < 1/0.05 normal images: the budget's quantile is their maximum; the F1 threshold is kept when higher.
    assert float(post._image_threshold) == pytest.approx(max(float(normal.max()), post.f1_image_threshold))
    assert (normal > post._image_threshold).float().mean() <= post.max_false_alarm_rate
    results = engine.test(model=model, datamodule=datamodule, verbose=False)
    assert results
    batches = engine.predict(model=model, datamodule=datamodule)
    labels = []
    for batch in batches:
        _check_rule(batch.pred_label, batch.pred_mask, batch.pred_score)
        labels += batch.pred_label.tolist()
    images = torch.stack([datamodule.test_data[i].image for i in range(len(datamodule.test_data))])
    model.eval()
    out = model(images)
    _check_rule(out.pred_label, out.pred_mask, out.pred_score)
    assert out.pred_label.tolist() == labels  # forward and Engine.predict decide alike
    _export_and_infer(engine, model, tmp_path / "export", images)
    return model


def test_default_post_processor_of_our_models_decides_on_every_path(
    datamodule: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Pae(channels=[8, 16], coreset_sampling_ratio=0.5, decomposition_steps=2)
    assert isinstance(model.post_processor, DecisionPostProcessor)
    _run_paths(model, datamodule, tmp_path, monkeypatch)


def test_refiner_decides_on_every_path_and_seeds_only_above_the_image_threshold(
    datamodule: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Patchcore(
        backbone="resnet18",
        layers=["layer2", "layer3"],
        pre_trained=False,
        coreset_sampling_ratio=0.5,
        pre_processor=Patchcore.configure_pre_processor((64, 64)),
        post_processor=F2PAD(max_iters=0),
    )
    _run_paths(model, datamodule, tmp_path, monkeypatch)


def test_benchmark_operating_points_come_from_one_test_pass_and_match_the_deployed_masks(tmp_path: Path) -> None:
    padim = {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"], "n_features": 16}
    data = tiny_embedded_data(tmp_path / "data", n_train=16, n_test_good=6, n_test_defect=2)
    config = {
        "isolation": "none",
        "output_dir": str(tmp_path / "out"),
        "image_size": 32,
        "qualitative_samples": 0,
        "print_table": False,
        "benchmark": {
            "seed": 0,
            "model": {"class_path": "Padim", "init_args": padim},
            "post_processor": {"grid": ["default", {"class_path": "f2pad", "init_args": {"max_iters": 0}}]},
            "data": data,
        },
    }
    frame = run_benchmark(config)
    assert list(frame["status"]) == ["ok", "ok"], list(frame["reason"])
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    for _, row in frame.iterrows():
        thresholds = [row[f"op_threshold_{name}"] for name in ("0pct", "1pct", "5pct", "10pct")]
        assert thresholds == sorted(thresholds, reverse=True)  # a looser budget, a lower threshold
        flagged = [row[f"op_flagged_{name}"] for name in ("0pct", "1pct", "5pct", "10pct")]
        assert flagged == sorted(flagged)
        images = per_image[per_image["job_id"] == row["job_id"]]
        good = images[images["gt_label"] == 0]
        if row["post_processor"] == "f2pad":
            # The deployed refiner (default budget 5 %) gives exactly the 5 % operating point of the one test pass.
            assert row["op_dice_5pct"] == pytest.approx(row["mean_image_dice"], abs=1e-6)
            assert row["op_flagged_5pct"] == pytest.approx(float((good["pred_area_fraction"] > 0).mean()), abs=1e-6)
            below = images[images["raw_score"] <= row["op_threshold_5pct"]]
            assert (below["pred_area_fraction"] == 0).all()  # no mask below the image threshold
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| Padim | f2pad | synthetic | gravel |" in markdown
    assert "0pct: dice / flagged" in markdown
    assert (tmp_path / "out" / "plots" / "operating_points.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_caps_the_f1_threshold_from_below_only() -> None:
    normal = torch.arange(20).float()  # rate 0.1: k = floor(0.1 * 21) = 2, threshold 18, one score above
    assert budget_image_threshold(normal, 0.1, f1_threshold=12.0) == 18.0  # F1 too loose: raised to the cap
    assert budget_image_threshold(normal, 0.1, f1_threshold=18.5) == 18.5  # F1 already within the budget: kept
    assert budget_image_threshold(normal, 0.1, f1_threshold=float("nan")) == 18.0


@pytest.mark.parametrize(("rate", "normal"), [(None, 2), (0.25, 3), (0.01, 4)])
def test_datamodule_holds_back_enough_normal_images_for_the_budget(
    tiny_mvtec_root: Path, rate: float | None, normal: int, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = SyntheticValMVTecAD(
        root=tiny_mvtec_root, category="gravel", num_workers=0, seed=0, max_false_alarm_rate=rate
    )
    with caplog.at_level(logging.INFO):
        datamodule.setup()
    samples = datamodule.val_data.samples
    assert int((samples.label_index == 0).sum()) == normal  # 8 training images: 25 % by default, at most half
    assert len(datamodule.train_data) == 8 - normal
    assert ("cannot hold back 99 normal images" in caplog.text) == (rate == 0.01)
