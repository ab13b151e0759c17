"""Tests of the synthetic defect generators (tiny images, real computations)."""

import math

import pytest
import torch
from scipy import ndimage

from anomalib_pixelrefine.data import (
    CrackDefect,
    CutPaste,
    CutPasteScar,
    DefectGenerator,
    HandDrawnDefect,
    MixedDefect,
    PerlinDefect,
    SyntheticDefectDataset,
)

FACTORIES = {
    "cut_paste_color": lambda seed: CutPaste(mode="color", seed=seed),
    "cut_paste_patch": lambda seed: CutPaste(mode="patch", seed=seed),
    "cut_paste_mixed": lambda seed: CutPaste(mode="mixed", seed=seed),
    "scar": lambda seed: CutPasteScar(seed=seed),
    "perlin": lambda seed: PerlinDefect(seed=seed),
    "hand_drawn": lambda seed: HandDrawnDefect(seed=seed),
    "crack": lambda seed: CrackDefect(seed=seed),
    "mixed": lambda seed: MixedDefect(seed=seed),
}


def _texture(batch: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth random texture in [0.05, 0.95] (not constant, so patches and colours really change it)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(2, size // 8), max(2, size // 8), generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return 0.05 + 0.9 * image


def _assert_exact(original: torch.Tensor, out: torch.Tensor, mask: torch.Tensor, min_diff: float) -> None:
    change = (out - original).abs().amax(dim=-3, keepdim=True)
    assert torch.equal(change > 0, mask > 0), "changed pixels differ from the mask"
    assert (change[mask > 0] >= min_diff - 1e-6).all(), "a masked pixel changed less than min_diff"
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", FACTORIES)
def test_single_image_shape_and_exact_mask(name: str) -> None:
    gen = FACTORIES[name](0)
    image = _texture(1, 48)[0]
    for _ in range(5):
        out, mask = gen(image)
        assert out.shape == image.shape
        assert mask.shape == (1, 48, 48)
        assert out.dtype == image.dtype
        assert mask.sum() > 0
        assert out.min() >= 0
        assert out.max() <= 1
        _assert_exact(image, out, mask, gen.min_diff)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("size", [32, 128])
def test_batch_shape_exact_and_nonempty(name: str, size: int) -> None:
    gen = FACTORIES[name](1)
    images = _texture(4, size, seed=size)
    out, mask = gen(images)
    assert out.shape == images.shape
    assert mask.shape == (4, 1, size, size)
    assert (mask.sum(dim=(1, 2, 3)) > 0).all()
    _assert_exact(images, out, mask, gen.min_diff)


@pytest.mark.parametrize("name", FACTORIES)
def test_deterministic_with_seed(name: str) -> None:
    images = _texture(3, 40)
    out_a, mask_a = FACTORIES[name](7)(images)
    out_b, mask_b = FACTORIES[name](7)(images)
    assert torch.equal(out_a, out_b)
    assert torch.equal(mask_a, mask_b)
    out_c, mask_c = FACTORIES[name](8)(images)
    assert not torch.equal(mask_a, mask_c) or not torch.equal(out_a, out_c)
    # an explicit generator overrides the internal one
    gen = FACTORIES[name](123)
    out_d, _ = gen(images, generator=torch.Generator().manual_seed(5))
    out_e, _ = gen(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out_d, out_e)


def test_perlin_keeps_global_rng_untouched() -> None:
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    PerlinDefect(seed=0)(_texture(2, 32))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["cut_paste_color", "perlin", "hand_drawn", "crack", "mixed"])
def test_single_channel_images(name: str) -> None:
    gen = FACTORIES[name](2)
    images = _texture(2, 32, channels=1)
    out, mask = gen(images)
    assert out.shape == (2, 1, 32, 32)
    _assert_exact(images, out, mask, gen.min_diff)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_far_from_original_colour_check(value: float) -> None:
    """F2PAD eq. 16: every masked pixel must end up far from the original, even when the colour is close."""
    image = torch.full((64, 3, 32, 32), value)
    gen = CutPaste(mode="color", min_diff=0.25, seed=3)
    out, mask = gen(image)
    change = (out - image).abs().amax(dim=1, keepdim=True)
    assert (change[mask > 0] >= 0.25 - 1e-6).all()
    assert torch.equal(change > 0, mask > 0)


def test_colour_close_to_original_is_pushed_away() -> None:
    """A patch whose content equals the original (pasting a constant image onto itself) is still visible."""
    image = torch.full((3, 32, 32), 0.3)
    out, mask = CutPaste(mode="patch", jitter=0.0, seed=0)(image)
    assert mask.sum() > 0
    assert torch.allclose(out[:, mask[0] > 0], torch.tensor(0.4), atol=1e-6)


def test_cut_paste_area_relative_to_image_size() -> None:
    for size in (32, 256):
        gen = CutPaste(mode="color", area_range=(0.05, 0.1), seed=0)
        _, mask = gen(_texture(16, size))
        areas = mask.mean(dim=(1, 2, 3))
        # rectangles centred near the border are clipped, so only the upper bound is strict
        assert (areas <= 0.1 + 2 / size).all()
        assert areas.median() >= 0.02


@pytest.mark.parametrize("size", [64, 256])
def test_crack_is_thin_and_long(size: int) -> None:
    gen = CrackDefect(seed=4)
    _, mask = gen(_texture(8, size, seed=1))
    max_width = max(1.0, 0.015 * size)
    for single in mask[:, 0].numpy().astype(bool):
        # inside a line of width w the distance to the background is about w / 2 (+ pixel discretisation at bends)
        assert ndimage.distance_transform_edt(single).max() <= max_width / 2 + 1.5
        ys, xs = single.nonzero()
        extent = math.hypot(ys.max() - ys.min(), xs.max() - xs.min())
        assert extent >= 0.15 * size
        assert single.mean() < 0.06


def test_scar_is_thinner_than_cut_paste() -> None:
    images = _texture(16, 128)
    _, scar = CutPasteScar(seed=0)(images)
    _, rect = CutPaste(seed=0)(images)
    assert scar.mean() < rect.mean() / 2


def test_mixed_defect_equal_shares() -> None:
    mixed = MixedDefect(seed=0)
    counts = torch.bincount(mixed.choose(8000), minlength=4).float() / 8000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.02)
    kinds = [type(gen) for gen in mixed.generators]
    assert kinds == [CutPaste, CutPasteScar, PerlinDefect, HandDrawnDefect]
    _, mask = mixed(_texture(6, 32))
    assert len(mixed.last_choices) == 6
    assert (mask.sum(dim=(1, 2, 3)) > 0).all()


def test_mixed_defect_weights() -> None:
    mixed = MixedDefect([CutPaste(), CrackDefect()], weights=[3, 1], seed=0)
    share = mixed.choose(4000).float().mean()
    assert abs(share - 0.25) < 0.03
    with pytest.raises(ValueError, match="weights"):
        MixedDefect([CutPaste()], weights=[1, 2])
    with pytest.raises(ValueError, match="at least one"):
        MixedDefect([])


def test_bad_inputs_raise_clear_errors() -> None:
    gen = CutPaste(seed=0)
    with pytest.raises(ValueError, match="floating point"):
        gen(torch.zeros(3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        gen(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="mode"):
        CutPaste(mode="colour")
    with pytest.raises(ValueError, match="area_range"):
        CutPaste(area_range=(0.5, 0.1))
    with pytest.raises(ValueError, match="min_diff"):
        DefectGenerator(min_diff=0.0)


def test_synthetic_defect_dataset() -> None:
    normals = list(_texture(5, 32))
    dataset = SyntheticDefectDataset(normals, CutPaste(seed=0), seed=3)
    assert len(dataset) == 5
    image_a, mask_a = dataset[2]
    image_b, mask_b = dataset[2]
    assert torch.equal(image_a, image_b)
    assert torch.equal(mask_a, mask_b)
    assert mask_a.shape == (1, 32, 32)
    _assert_exact(normals[2], image_a, mask_a, 0.1)
    clean = SyntheticDefectDataset([{"image": img} for img in normals], probability=0.0)
    image, mask = clean[0]
    assert torch.equal(image, normals[0])
    assert mask.sum() == 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    images, masks = next(iter(loader))
    assert images.shape == (5, 3, 32, 32)
    assert masks.shape == (5, 1, 32, 32)
