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
    FadingDiscolourationDefect,
    HaloBurnDefect,
    HandDrawnDefect,
    MixedDefect,
    PerlinDefect,
    SoftRimStainDefect,
    SyntheticDefectDataset,
    defect_generator,
    size_bin,
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
    "halo_burn": lambda seed: HaloBurnDefect(seed=seed),
    "fading_discolouration": lambda seed: FadingDiscolourationDefect(seed=seed),
    "soft_rim_stain": lambda seed: SoftRimStainDefect(seed=seed),
}
#: Kinds whose faint parts belong to the mask (hard outer edge, change fading down to just above min_diff).
FAINT_KINDS = ["halo_burn", "fading_discolouration", "soft_rim_stain"]


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


@pytest.mark.parametrize("name", ["cut_paste_color", "perlin", "hand_drawn", "crack", "mixed", *FAINT_KINDS])
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


def _faint_run(name: str, seed: int, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(change (H, W), mask (H, W) bool, faint part of the mask)`` of one defect on ``image``.

    The faint part (halo / rim / faded part) comes from a run on flat grey with the same seed: the geometry does not
    depend on the image. On grey 0.5 the halo burn's core changes by >= 0.5 * 0.6 / 3 = 0.1, its halo by < 0.08; for
    the stains it is where the change is below half the peak.
    """
    grey = torch.full_like(image, 0.5)
    out_grey, mask_grey = defect_generator(name, seed)(grey)
    grey_change = (out_grey - grey).abs().amax(0)
    inside = mask_grey[0] > 0
    level = 0.08 if name == "halo_burn" else 0.5 * float(grey_change[inside].max())
    out, mask = defect_generator(name, seed)(image)
    assert torch.equal(mask, mask_grey), "the mask depends on the image content"
    return (out - image).abs().amax(0), inside, inside & (grey_change < level)


@pytest.mark.parametrize("name", FAINT_KINDS)
def test_faint_kinds_exact_deterministic_and_faint(name: str) -> None:
    texture = _texture(1, 64, seed=3)[0]
    for seed in range(6):
        gen = defect_generator(name, seed)
        out, mask = gen(texture)
        again, mask_again = defect_generator(name, seed)(texture)
        assert out.shape == texture.shape
        assert mask.shape == (1, 64, 64)
        assert torch.equal(out, again)
        assert torch.equal(mask, mask_again)
        assert gen.min_diff == pytest.approx(0.03)
        assert not gen.soft_edge
        _assert_exact(texture, out, mask, gen.min_diff)  # min_diff inside, bit-identical outside
        change, inside, _ = _faint_run(name, seed, texture)
        # The mask reaches down to the faint level: its faintest pixels changed by about min_diff (a few-pixel mask
        # may have no pixel centre near its outer edge).
        if inside.sum() >= 40:
            assert change[inside].min() <= 1.2 * gen.min_diff


@pytest.mark.parametrize(("name", "max_ratio"), [("halo_burn", 0.25), ("soft_rim_stain", 0.4)])
def test_halo_and_rim_share_and_contrast(name: str, max_ratio: float) -> None:
    """The faint ring is >= 30 % of the mask, and its mean change is well below the core's (grey and texture)."""
    for image in (torch.full((3, 64, 64), 0.5), _texture(1, 64, seed=5)[0]):
        for seed in range(8):
            change, inside, faint = _faint_run(name, seed, image)
            strong = inside & ~faint
            assert faint.sum() >= 0.30 * inside.sum(), f"seed {seed}: faint part {faint.sum()} of {inside.sum()}"
            assert strong.any()
            assert change[faint].mean() <= max_ratio * change[strong].mean(), f"seed {seed}"


def test_fading_discolouration_is_mostly_low_contrast() -> None:
    checked = 0
    for seed in range(12):
        change, inside, faint = _faint_run("fading_discolouration", seed, torch.full((3, 64, 64), 0.5))
        if inside.sum() >= 40:  # a few-pixel blob samples its fade too coarsely
            checked += 1
            assert change[inside].max() >= 0.12 - 1e-6  # the strong side is visible
            assert faint.sum() >= 0.3 * inside.sum(), f"seed {seed}"
    assert checked >= 6


def test_halo_burn_tints_a_grey_background() -> None:
    """On grey the halo darkens blue most and red least: a yellowish-brown colour change, not only a grey one."""
    grey = torch.full((3, 64, 64), 0.5)
    for seed in range(6):
        out, _ = defect_generator("halo_burn", seed)(grey)
        _, _, halo = _faint_run("halo_burn", seed, grey)
        drop = (grey - out)[:, halo].mean(1)  # per-channel mean darkening (R, G, B)
        assert drop[2] > drop[1] > drop[0] > 0
        assert drop[0] <= 0.75 * drop[2]
        assert (out[2, halo] < out[0, halo]).all()  # every halo pixel is coloured (less blue than red)


@pytest.mark.parametrize("name", FAINT_KINDS)
def test_faint_kinds_span_the_size_bins(name: str) -> None:
    image = torch.full((3, 128, 128), 0.5)
    areas = [float(defect_generator(name, seed)(image)[1].mean()) for seed in range(30)]
    bins = {size_bin(area) for area in areas}
    assert len(bins) >= 3, bins
    assert min(areas) < 0.01
    assert max(areas) >= 0.04


def test_faint_kinds_reject_bad_ranges() -> None:
    with pytest.raises(ValueError, match="halo_range"):
        HaloBurnDefect(halo_range=(0.8, 1.2))
    with pytest.raises(ValueError, match="rim_range"):
        SoftRimStainDefect(rim_range=(1.6, 1.3))
    with pytest.raises(ValueError, match="fade_range"):
        FadingDiscolourationDefect(fade_range=(2.0, 1.0))
