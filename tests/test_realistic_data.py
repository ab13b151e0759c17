"""Realistic evaluation data: new defect kinds and sizes, size bins, honest splits, real ELPV defects, mask metrics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anomalib_pixelrefine.data import (
    DEFAULT_DEFECTS,
    SIZE_BINS,
    BurnDefect,
    FadingDiscolourationDefect,
    HaloBurnDefect,
    PittingDefect,
    ScratchDefect,
    SoftRimStainDefect,
    StainDefect,
    TextureSwapDefect,
    build_default_benchmark,
    default_datamodule,
    defect_generator,
    elpv_available,
    size_bin,
)
from anomalib_pixelrefine.metrics import EmptyMaskRate, GoodFPArea, MeanImageDice, MeanImageIoU

NEW_KINDS = [
    StainDefect,
    BurnDefect,
    PittingDefect,
    ScratchDefect,
    TextureSwapDefect,
    HaloBurnDefect,
    FadingDiscolourationDefect,
    SoftRimStainDefect,
]


@pytest.fixture(scope="module")
def textures() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.3 + 0.4 * torch.rand(6, 3, 64, 64, generator=generator)


@pytest.mark.parametrize("kind", NEW_KINDS, ids=lambda kind: kind.__name__)
def test_new_kinds_have_exact_masks_and_are_reproducible(kind, textures) -> None:
    out, mask = kind(seed=3)(textures)
    again, mask_again = kind(seed=3)(textures)
    assert torch.equal(out, again)
    assert torch.equal(mask, mask_again)
    inside = mask[:, 0] > 0
    assert inside.flatten(1).any(1).all()  # every image gets a defect
    change = (out - textures).abs().amax(1)
    assert (change[inside] >= kind(seed=3).min_diff - 1e-6).all()
    if kind.soft_edge:
        # The faint halo outside the mask stays below the annotated level.
        peak = change.flatten(1).amax(1).view(-1, 1, 1)
        assert (change <= peak / 2 + 1e-6)[~inside].all()
    else:
        assert torch.equal(out.permute(1, 0, 2, 3)[:, ~inside], textures.permute(1, 0, 2, 3)[:, ~inside])


def test_defect_sizes_span_tiny_to_large() -> None:
    images = 0.5 * torch.ones(4, 3, 128, 128)
    areas = []
    for name in DEFAULT_DEFECTS:
        for seed in range(3):
            _, masks = defect_generator(name, seed=seed)(images + 0.1 * torch.rand_like(images))
            areas += masks.flatten(1).mean(1).tolist()
    assert min(areas) < 0.002
    assert max(areas) > 0.05
    assert {size_bin(area) for area in areas} == {name for name, _, _ in SIZE_BINS}


def test_size_bin_edges() -> None:
    assert size_bin(0.0) == ""
    assert size_bin(0.0005) == "tiny<0.2%"
    assert size_bin(0.002) == "small0.2-1%"
    assert size_bin(0.02) == "medium1-4%"
    assert size_bin(1.0) == "large>=4%"


def test_default_datamodule_never_uses_test_files_in_fit_or_validation(tmp_path: Path) -> None:
    path = build_default_benchmark(
        tmp_path, categories=["brick"], image_size=32, n_train=8, n_test_good=2, n_test_defect=1
    )["brick"]
    datamodule = default_datamodule(path, seed=0)
    datamodule.setup()
    test_files = {str(Path(p).resolve()) for p in datamodule.test_data.samples.image_path}
    train_files = {str(Path(p).resolve()) for p in datamodule.train_data.samples.image_path}
    val = datamodule.val_data.samples
    assert not test_files & train_files
    assert not test_files & {str(Path(p).resolve()) for p in val.image_path}
    # Validation = held-back training images (normal) + their copies with synthetic defects and masks.
    held_back = {str(Path(p).resolve()) for p in val[val.label_index == 0].image_path}
    assert held_back <= {str(p.resolve()) for p in (path / "train" / "good").iterdir()}
    assert not held_back & train_files
    # 8 training images: the default 5 % budget needs 19 held back, so half of them are (at most half).
    assert (val.label_index == 1).sum() == len(held_back) == 4
    batch = next(iter(datamodule.val_dataloader()))
    defective = batch.gt_label.bool()
    assert batch.gt_mask[defective].flatten(1).any(1).all()
    assert not batch.gt_mask[~defective].any()


@pytest.mark.skipif(not elpv_available(), reason="elpv-dataset not installed")
def test_elpv_real_defects_are_an_image_level_test_set(tmp_path: Path) -> None:
    path = build_default_benchmark(
        tmp_path,
        categories=["elpv_real"],
        image_size=32,
        n_train=4,
        n_test_good=2,
        n_test_defect=1,
        defects=["crack", "stain"],
    )["elpv_real"]
    assert not (path / "ground_truth").exists()
    assert len(list((path / "test" / "defect").iterdir())) == 2
    datamodule = default_datamodule(path, seed=0)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.gt_label.sum() == 2
    assert len(batch.gt_label) == 4


def _masks(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool).view(len(rows), 1, 1, -1)


def test_deployed_mask_metrics_by_hand() -> None:
    gt = _masks([1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0])
    pred = _masks([1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0])
    values = {}
    for cls in (MeanImageDice, MeanImageIoU, EmptyMaskRate, GoodFPArea):
        metric = cls(fields=["pred_mask", "gt_mask"])
        metric.update(SimpleNamespace(pred_mask=pred, gt_mask=gt))
        values[cls.__name__] = float(metric.compute())
    # Image 1: Dice 2/3, IoU 1/2; image 2: empty mask -> 0 and counted as empty; good images: 2/4 and 0 area.
    assert values["MeanImageDice"] == pytest.approx((2 / 3) / 2)
    assert values["MeanImageIoU"] == pytest.approx(0.5 / 2)
    assert values["EmptyMaskRate"] == pytest.approx(0.5)
    assert values["GoodFPArea"] == pytest.approx(0.25)


def test_deployed_metric_without_defective_images_is_nan() -> None:
    metric = MeanImageDice(fields=["pred_mask", "gt_mask"])
    metric.update(SimpleNamespace(pred_mask=_masks([1, 0]), gt_mask=_masks([0, 0])))
    assert torch.isnan(metric.compute())
