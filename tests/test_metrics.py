"""Tests for anomalib_pixelrefine.metrics: hand-computed cases, scikit-learn/anomalib references, Engine use."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPRO
from anomalib.utils.cv import connected_components_cpu
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, precision_recall_curve

from anomalib_pixelrefine.metrics import (
    SPRO,
    BestDice,
    BestIoU,
    Dice,
    IoU,
    aspro_score,
    best_threshold_dice,
    best_threshold_iou,
    dice_score,
    iou_score,
    spro_curve,
    spro_score,
)


def _random_case(
    seed: int, n: int = 6, size: int = 16, decimals: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, size, size, generator=g)
    if decimals is not None:
        scores = scores.round(decimals=decimals)
    masks = (torch.rand(n, size, size, generator=g) + 0.6 * scores) > 1.1
    return scores, masks


def _batch(**fields: torch.Tensor) -> ImageBatch:
    n, h, w = fields["gt_mask"].shape
    return ImageBatch(image=torch.zeros(n, 3, h, w), **fields)


# ------------------------------------------------------------------------------------------------ Dice / IoU, binary


def test_dice_iou_hand_case() -> None:
    pred = torch.zeros(4, 4, dtype=torch.bool)
    pred[:2] = True  # rows 0-1: 8 px
    target = torch.zeros(4, 4, dtype=torch.bool)
    target[:, :2] = True  # cols 0-1: 8 px -> TP 4, FP 4, FN 4
    assert dice_score(pred, target).item() == pytest.approx(8 / 16)
    assert iou_score(pred, target).item() == pytest.approx(4 / 12)
    # numeric 0/1 masks are accepted as well
    assert dice_score(pred.float(), target.long()).item() == pytest.approx(0.5)


def test_empty_conventions() -> None:
    empty = torch.zeros(2, 4, 4)
    full = torch.ones(2, 4, 4)
    assert dice_score(empty, empty).item() == 1.0
    assert iou_score(empty, empty).item() == 1.0
    assert dice_score(empty, full).item() == 0.0
    assert iou_score(full, empty).item() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_iou_match_sklearn(seed: int) -> None:
    scores, masks = _random_case(seed)
    pred = scores > 0.6
    y, p = masks.flatten().numpy(), pred.flatten().numpy()
    assert dice_score(pred, masks).item() == pytest.approx(f1_score(y, p), abs=1e-6)
    assert iou_score(pred, masks).item() == pytest.approx(jaccard_score(y, p), abs=1e-6)


def test_dice_iou_metric_accumulates_counts_over_batches() -> None:
    scores, masks = _random_case(3, n=8)
    pred = scores > 0.55
    dice, iou = Dice(fields=["pred_mask", "gt_mask"], prefix="pixel_"), IoU()
    for i in range(0, 8, 3):
        batch = _batch(pred_mask=pred[i : i + 3], gt_mask=masks[i : i + 3])
        dice.update(batch)
        iou.update(batch)
    assert dice.name == "pixel_Dice"
    assert iou.fields == ("pred_mask", "gt_mask")
    assert dice.compute().item() == pytest.approx(dice_score(pred, masks).item(), abs=1e-6)
    assert iou.compute().item() == pytest.approx(iou_score(pred, masks).item(), abs=1e-6)
    # mean of per-batch Dice would differ: the metric pools counts
    assert int(dice.tp) == int((pred & masks).sum())


# ------------------------------------------------------------------------------------------------ best threshold


@pytest.mark.parametrize("seed", [0, 4])
def test_best_dice_equals_sklearn_pr_curve_f1_max(seed: int) -> None:
    scores, masks = _random_case(seed, decimals=2)  # ties on purpose
    precision, recall, thresholds = precision_recall_curve(masks.flatten().numpy(), scores.flatten().numpy())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    dice, thr = best_threshold_dice(scores, masks)
    assert dice.item() == pytest.approx(f1[best], abs=1e-6)
    assert thr.item() == pytest.approx(thresholds[best], abs=1e-6)
    assert dice_score(scores >= thr, masks).item() == pytest.approx(dice.item(), abs=1e-6)
    iou, thr_iou = best_threshold_iou(scores, masks)
    assert iou.item() == pytest.approx(f1[best] / (2 - f1[best]), abs=1e-6)
    assert thr_iou.item() == pytest.approx(thr.item())


def test_best_threshold_hand_case() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.1])
    masks = torch.tensor([1, 0, 1, 0, 0])
    # thresholds: 0.9 -> TP1 FP0 FN1: 2/3; 0.8 -> TP1 FP1 FN1: 0.5; 0.7 -> TP2 FP1 FN0: 0.8 (best)
    dice, thr = best_threshold_dice(scores, masks)
    assert dice.item() == pytest.approx(0.8)
    assert thr.item() == pytest.approx(0.7)
    # no positive pixel anywhere: predicting nothing is perfect, threshold above the max
    dice, thr = best_threshold_dice(scores, torch.zeros(5))
    assert dice.item() == 1.0
    assert thr.item() > 0.9


def test_binned_sweep_exact_on_grid_and_bounded() -> None:
    scores, masks = _random_case(5, decimals=2)
    exact, _ = best_threshold_dice(scores, masks)
    binned, _ = best_threshold_dice(scores, masks, num_thresholds=101)  # bins of width 0.0099: one value per bin
    assert binned.item() == pytest.approx(exact.item(), abs=1e-6)
    coarse, thr = best_threshold_dice(scores, masks, num_thresholds=7)
    assert coarse.item() <= exact.item() + 1e-9  # bin edges are a subset of all thresholds
    assert dice_score(scores >= thr, masks).item() == pytest.approx(coarse.item(), abs=1e-6)


def test_best_dice_metric_histogram_growth_matches_exact() -> None:
    scores, masks = _random_case(6, n=8)
    scales = torch.tensor([1.0, 1.0, 3.0, 3.0, 0.2, 0.2, 7.0, 7.0])[:, None, None]
    offsets = torch.tensor([0.0, 0.0, 0.0, 0.0, -2.0, -2.0, 1.0, 1.0])[:, None, None]
    maps = scores * scales + offsets  # later batches extend the range up and down
    metric, metric_iou = BestDice(), BestIoU(num_bins=20_000)
    for i in range(0, 8, 2):
        metric.update(_batch(anomaly_map=maps[i : i + 2], gt_mask=masks[i : i + 2]))
        metric_iou.update(_batch(anomaly_map=maps[i : i + 2], gt_mask=masks[i : i + 2]))
    exact, _ = best_threshold_dice(maps, masks)
    value = metric.compute()
    assert value.item() <= exact.item() + 1e-9
    assert value.item() == pytest.approx(exact.item(), abs=5e-3)
    # the exposed threshold reproduces the reported score
    assert dice_score(maps >= metric.best_threshold, masks).item() == pytest.approx(value.item(), abs=1e-6)
    exact_iou, _ = best_threshold_iou(maps, masks)
    assert metric_iou.compute().item() == pytest.approx(exact_iou.item(), abs=5e-3)
    assert int(metric.pos_hist.sum()) == int(masks.sum())
    assert int(metric.neg_hist.sum()) == int((~masks).sum())


def test_best_dice_metric_few_levels_is_exact() -> None:
    g = torch.Generator().manual_seed(7)
    maps = torch.randint(0, 5, (6, 8, 8), generator=g).float() / 4
    masks = torch.rand(6, 8, 8, generator=g) < maps * 0.5
    metric = BestDice(num_bins=100)
    metric.update(_batch(anomaly_map=maps[:3], gt_mask=masks[:3]))
    metric.update(_batch(anomaly_map=maps[3:] * 2, gt_mask=masks[3:]))  # range grows x2: aligned merge
    exact, _ = best_threshold_dice(torch.cat([maps[:3], maps[3:] * 2]), masks)
    assert metric.compute().item() == pytest.approx(exact.item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ errors


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="Shape mismatch"):
        dice_score(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="target must be a binary mask"):
        iou_score(torch.zeros(4, 4), torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="masks must be a binary mask"):
        best_threshold_dice(torch.rand(4, 4), torch.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="Shape mismatch: anomaly_maps"):
        best_threshold_iou(torch.rand(4, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"pred_mask .*binary"):
        Dice().update(SimpleNamespace(pred_mask=torch.rand(2, 4, 4), gt_mask=torch.zeros(2, 4, 4)))
    with pytest.raises(ValueError, match="gt_mask must be a binary mask"):
        BestDice().update(SimpleNamespace(anomaly_map=torch.rand(2, 4, 4), gt_mask=torch.full((2, 4, 4), 3.0)))
    with pytest.raises(ValueError, match="Shape mismatch: anomaly_map"):
        BestIoU().update(SimpleNamespace(anomaly_map=torch.rand(2, 4, 3), gt_mask=torch.zeros(2, 4, 4)))
    with pytest.raises(ValueError, match="num_bins"):
        BestDice(num_bins=3)
    with pytest.raises(RuntimeError, match="before any update"):
        BestDice().compute()


# ------------------------------------------------------------------------------------------------ sPRO (functional)


def test_spro_hand_cases() -> None:
    maps = torch.zeros(2, 6, 6)
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[0, :5] = True
    region[1, :5] = True  # area 10
    maps[0, 0, :3] = 1.0  # 3 detected pixels
    # saturation 50 % of the area = 5 px: 3/5 not saturated
    assert spro_score(maps, [region[None], torch.zeros(0, 6, 6)], 0.5, 0.5).item() == pytest.approx(0.6)
    maps[0, 1, :3] = 1.0  # 6 detected pixels >= 5: saturated
    assert spro_score(maps, [region[None], torch.zeros(0, 6, 6)], 0.5, 0.5).item() == pytest.approx(1.0)
    # plain PRO (saturation = whole area): 6/10
    assert spro_score(maps, [region[None], torch.zeros(0, 6, 6)], 1.0, 0.5).item() == pytest.approx(0.6)

    # two images, three defects (two overlapping in image 0), absolute saturation areas
    small = torch.zeros(6, 6, dtype=torch.bool)
    small[4:6, 4:6] = True  # area 4, 1 px detected
    maps[0, 4, 4] = 1.0
    other = torch.zeros(6, 6, dtype=torch.bool)
    other[2:4, 2:6] = True  # image 1, area 8, all detected
    maps[1, 2:4, 2:6] = 1.0
    masks = [torch.stack([region, small]), other[None]]
    sat = [torch.tensor([8.0, 2.0]), torch.tensor([100.0])]  # 100 > area 8: capped at the area
    # region: min(6/8, 1) = 0.75; small: min(1/2, 1) = 0.5; other: min(8/8, 1) = 1
    assert spro_score(maps, masks, sat, 0.5).item() == pytest.approx((0.75 + 0.5 + 1.0) / 3)


def test_spro_curve_matches_threshold_sweep_and_anomalib_aupro() -> None:
    scores, masks = _random_case(8, n=6, size=16, decimals=2)
    masks[4:] = False  # two anomaly-free images for the LOCO-style FPR
    labels = connected_components_cpu(masks[:, None].float())[:, 0]
    per_image = [torch.stack([labels[i] == k for k in labels[i].unique() if k > 0]) for i in range(4)]
    per_image += [torch.zeros(0, 16, 16, dtype=torch.bool)] * 2
    fpr, spro, thresholds = spro_curve(scores, per_image, 0.3)
    assert torch.all(fpr[1:] >= fpr[:-1])
    assert torch.all(spro[1:] >= spro[:-1])
    # every curve point equals sPRO at its threshold; FPR from the anomaly-free images only (LOCO protocol)
    for k in (1, len(thresholds) // 3, len(thresholds) // 2, len(thresholds) - 1):
        t = thresholds[k].item()
        assert spro[k].item() == pytest.approx(spro_score(scores, per_image, 0.3, t).item(), abs=1e-6)
        assert fpr[k].item() == pytest.approx((scores[4:] >= t).float().mean().item(), abs=1e-6)
    # saturation 1.0 + background of all images as negatives = anomalib's AUPRO
    aupro = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    aupro.update(_batch(anomaly_map=scores, gt_mask=masks))
    ours = aspro_score(scores, per_image, 1.0, fpr_limit=0.3, negatives=~masks)
    assert ours.item() == pytest.approx(aupro.compute().item(), abs=1e-4)
    # saturation can only help
    assert aspro_score(scores, per_image, 0.3, 0.3, negatives=~masks) >= ours - 1e-6


def test_spro_errors() -> None:
    maps = torch.rand(2, 4, 4)
    one = torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="one \\(R_i, H, W\\) tensor per image"):
        spro_score(maps, [one], 0.5, 0.5)
    with pytest.raises(ValueError, match="spatial size"):
        spro_score(maps, [one, torch.ones(1, 4, 5)], 0.5, 0.5)
    with pytest.raises(ValueError, match="area fraction"):
        spro_score(maps, [one, one], 1.5, 0.5)
    with pytest.raises(ValueError, match="one value per defect"):
        spro_score(maps, [one, one], [torch.tensor([1.0, 2.0]), torch.tensor([1.0])], 0.5)
    with pytest.raises(ValueError, match="empty defect mask"):
        spro_score(maps, [one, torch.zeros(1, 4, 4)], 0.5, 0.5)
    with pytest.raises(ValueError, match="masks_per_defect\\[1\\] must be a binary"):
        spro_score(maps, [one, torch.full((1, 4, 4), 0.5)], 0.5, 0.5)


# ------------------------------------------------------------------------------------------------ anomalib Engine


def test_metrics_in_anomalib_evaluator_with_engine(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.metrics import Evaluator
    from anomalib.models import Padim

    evaluator = Evaluator(
        test_metrics=[
            Dice(fields=["pred_mask", "gt_mask"], prefix="pixel_"),
            IoU(fields=["pred_mask", "gt_mask"], prefix="pixel_"),
            BestDice(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            BestIoU(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            SPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", saturation=0.5),
        ],
    )
    model = Padim(
        backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=32, evaluator=evaluator, visualizer=False
    )
    datamodule = MVTecAD(
        root=tiny_mvtec_root,
        category="gravel",
        num_workers=0,
        train_batch_size=4,
        eval_batch_size=4,
    )
    engine = Engine(accelerator="cpu", devices=1, logger=False, max_epochs=1, default_root_dir=tmp_path)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule)[0]
    for name in ("pixel_Dice", "pixel_IoU", "pixel_BestDice", "pixel_BestIoU", "pixel_SPRO"):
        assert name in results, f"{name} missing from {sorted(results)}"
        assert 0.0 <= results[name] <= 1.0
    assert results["pixel_BestDice"] >= results["pixel_Dice"] - 5e-3  # the best threshold beats the model's one
    assert results["pixel_IoU"] == pytest.approx(results["pixel_Dice"] / (2 - results["pixel_Dice"]), abs=1e-4)


# ------------------------------------------------------------------------------------------------ SPRO metric


def test_spro_metric_components_equal_functional_and_forward() -> None:
    scores, masks = _random_case(9, n=6, size=16, decimals=2)
    masks[4:] = False
    labels = connected_components_cpu(masks[:, None].float())[:, 0]
    per_image = [torch.stack([labels[i] == k for k in labels[i].unique() if k > 0]) for i in range(4)]
    per_image += [torch.zeros(0, 16, 16, dtype=torch.bool)] * 2
    expected = aspro_score(scores, per_image, 0.5, fpr_limit=0.1)
    metric = SPRO(saturation=0.5, fpr_limit=0.1, prefix="pixel_")
    metric.update(_batch(anomaly_map=scores[:3], gt_mask=masks[:3]))
    metric(_batch(anomaly_map=scores[3:], gt_mask=masks[3:]))  # forward() keeps the accumulated state
    assert metric.name == "pixel_SPRO"
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)
    metric.reset()
    metric.update(_batch(anomaly_map=scores[4:], gt_mask=masks[4:]))
    assert torch.isnan(metric.compute())  # no defect at all


def _write_loco_masks(folder: Path, masks: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder / "000.png"


def test_spro_metric_mvtec_loco_defects_config(tmp_path: Path) -> None:
    config = [
        {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True},
        {"defect_name": "extra", "pixel_value": 254, "saturation_threshold": 8, "relative_saturation": False},
    ]
    config_path = tmp_path / "defects_config.json"
    config_path.write_text(json.dumps(config))
    # ground truth at 16x16, anomaly maps at 8x8: masks are resized, absolute areas scaled by 1/4
    a = np.zeros((16, 16))
    a[0:4, 0:8] = 255  # 32 px -> 8 px at 8x8, saturation 50 % = 4 px
    b = np.zeros((16, 16))
    b[8:16, 8:16] = 254  # 64 px -> 16 px, saturation 8 px -> 2 px
    path = _write_loco_masks(tmp_path / "ground_truth" / "logical_anomalies" / "000", [a, b])
    maps = torch.zeros(2, 8, 8)
    maps[0, 0, 0:2] = 1.0  # 2 of the 4 needed px of defect a: 0.5
    maps[0, 4, 4] = 1.0  # 1 of the 2 needed px of defect b: 0.5
    maps[0, 4, 5] = 0.8  # at t <= 0.8: b saturated (1.0)
    maps[1, 0, 0] = 0.9  # the anomaly-free image: 1 of 64 px false positive at t <= 0.9
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, 0:2, 0:4] = True
    gt[0, 4:8, 4:8] = True
    metric = SPRO(fields=["anomaly_map", "gt_mask", "mask_path"], defects_config=config_path, fpr_limit=1.0)
    metric.update(_batch(anomaly_map=maps, gt_mask=gt, mask_path=[str(path), ""]))
    regions = metric.regions[0]
    assert regions.shape == (2, 8, 8)
    assert regions.sum((1, 2)).tolist() == [8, 16]
    assert metric.saturations[0].tolist() == pytest.approx([4.0, 2.0])
    assert spro_score(maps, metric.regions, metric.saturations, 1.0).item() == pytest.approx(0.5)
    assert spro_score(maps, metric.regions, metric.saturations, 0.8).item() == pytest.approx(0.75)
    # curve: (0,0) -> t=1: (0, .5) -> t=.9: (1/64, .5) -> t=.8: (1/64, .75) -> t=0: (1, 1)
    fpr, spro, _ = spro_curve(maps, metric.regions, metric.saturations)
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 64, 1 / 64, 1])
    assert spro.tolist() == pytest.approx([0, 0.5, 0.5, 0.75, 1.0])
    expected_auc = 0.5 * (1 / 64) + (0.75 + 1.0) / 2 * (1 - 1 / 64)
    assert metric.compute().item() == pytest.approx(expected_auc, abs=1e-6)

    bad = _write_loco_masks(tmp_path / "gt2" / "001", [np.full((16, 16), 7)])
    with pytest.raises(ValueError, match="pixel value 7, which is not in defects_config"):
        metric.update(_batch(anomaly_map=maps[:1], gt_mask=gt[:1], mask_path=[str(bad)]))
    with pytest.raises(ValueError, match='needs the "mask_path" field'):
        SPRO(defects_config=config).update(_batch(anomaly_map=maps, gt_mask=gt))
    with pytest.raises(ValueError, match="missing key"):
        SPRO(defects_config=[{"pixel_value": 1}])
    with pytest.raises(FileNotFoundError, match="defects_config file not found"):
        SPRO(defects_config=tmp_path / "nope.json")


def test_forward_and_channel_dim() -> None:
    scores, masks = _random_case(10, n=4)
    best = BestDice()
    first = best(_batch(anomaly_map=scores[:2], gt_mask=masks[:2]))  # forward: value of this batch only
    assert first.item() == pytest.approx(best_threshold_dice(scores[:2], masks[:2])[0].item(), abs=2e-3)
    best(_batch(anomaly_map=scores[2:], gt_mask=masks[2:]))
    assert best.compute().item() == pytest.approx(best_threshold_dice(scores, masks)[0].item(), abs=2e-3)
    # (B, 1, H, W) predictions against (B, H, W) ground truth are accepted
    dice = Dice()
    dice.update(SimpleNamespace(pred_mask=(scores > 0.5)[:, None], gt_mask=masks))
    assert dice.compute().item() == pytest.approx(dice_score(scores > 0.5, masks).item(), abs=1e-6)
