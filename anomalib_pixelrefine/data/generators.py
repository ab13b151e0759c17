"""Synthetic defect generators with exact masks.

Every generator takes a normal image (float tensor in ``[0, 1]``, shape ``(C, H, W)`` or ``(B, C, H, W)``) and returns
the defective image and its binary mask (``(1, H, W)`` or ``(B, 1, H, W)``). The mask is exact: every masked pixel
differs from the original by at least ``min_diff`` in some channel (the "far from the original" check of F2PAD,
eq. 16), and pixels outside the mask are bit-identical to the input, except for the soft-edged kinds (stains, burns),
whose faint halo below the annotated level stays, as around real stains. The faint-extent kinds (halo burn, fading
discolouration, soft-rim stain) annotate their faint parts instead (the whole visibly altered region, as in MVTec AD):
their change fades down to just above ``min_diff`` and stops at a hard mask edge.

Generators:
    * :class:`CutPaste` - rectangle filled with a random colour (F2PAD eq. 16) or with a patch cut from another image
      (CutPaste, Li et al. 2021).
    * :class:`CutPasteScar` - thin, long, rotated CutPaste rectangle ("scar").
    * :class:`PerlinDefect` - DRAEM-style Perlin-noise defect (wraps anomalib's ``PerlinAnomalyGenerator``).
    * :class:`HandDrawnDefect` - brush strokes along smooth random polylines (PNI's "manual drawing").
    * :class:`CrackDefect` - thin, jagged, branching dark cracks (PAEDID's simulated wood cracks).
    * :class:`StainDefect` - soft-edged, low-contrast stain / discolouration.
    * :class:`BurnDefect` - dark blob with a radial gradient.
    * :class:`PittingDefect` - cluster of tiny spots.
    * :class:`ScratchDefect` - thin, low-contrast, gently curved line.
    * :class:`TextureSwapDefect` - large irregular region filled with another texture (cut-paste / texture swap).
    * :class:`HaloBurnDefect` - charred burn core with a faint, brownish-tinted halo ring (both annotated).
    * :class:`FadingDiscolourationDefect` - discoloured blob whose change fades (linearly or radially) down to
      ``min_diff``; most of its mask is low contrast.
    * :class:`SoftRimStainDefect` - stain with a moderately visible interior and a wide, faint, annotated rim.
    * :class:`MixedDefect` - picks one generator per image (default: PNI's four kinds in equal shares).

All randomness comes from a ``torch.Generator`` (the ``generator`` argument of ``forward``, else an internal one seeded
with ``seed``), so results are reproducible.

Example:
    >>> import torch
    >>> from anomalib_pixelrefine.data import CutPaste
    >>> image = torch.rand(3, 64, 64)
    >>> defective, mask = CutPaste(mode="color", seed=0)(image)
    >>> defective.shape, mask.shape
    (torch.Size([3, 64, 64]), torch.Size([1, 64, 64]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torch import Generator, Tensor, nn
from torch.utils.data import Dataset

__all__ = [
    "BurnDefect",
    "CrackDefect",
    "CutPaste",
    "CutPasteScar",
    "DefectGenerator",
    "FadingDiscolourationDefect",
    "HaloBurnDefect",
    "HandDrawnDefect",
    "MixedDefect",
    "PerlinDefect",
    "PittingDefect",
    "ScratchDefect",
    "SoftRimStainDefect",
    "StainDefect",
    "SyntheticDefectDataset",
    "TextureSwapDefect",
    "defect_generator",
    "to_uint8",
]


#: A defective image and its mask.
Pair = tuple[Tensor, Tensor]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """Draw one float uniformly from ``[low, high)``."""
    return low + (high - low) * float(torch.rand(1, generator=generator).item())


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Draw one integer uniformly from ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _check_range(name: str, value: Sequence[float], low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    """Validate a ``(min, max)`` range argument and return it as a tuple of floats."""
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        msg = f"{name} must be a (min, max) pair with {low} <= min <= max <= {high}, got {value!r}."
        raise ValueError(msg)
    return float(value[0]), float(value[1])


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(ys, xs)`` pixel-centre coordinate grids of shape ``(H, W)``."""
    ys = torch.arange(height, device=device, dtype=torch.float32)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    return torch.meshgrid(ys, xs, indexing="ij")


def rotated_rectangle_mask(
    height: int,
    width: int,
    center: tuple[float, float],
    size: tuple[float, float],
    angle: float,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean mask of a filled, rotated rectangle.

    Args:
        height: Image height.
        width: Image width.
        center: ``(y, x)`` centre in pixels.
        size: ``(rect_height, rect_width)`` in pixels.
        angle: Rotation in radians (counter-clockwise).
        device: Device of the mask.

    Returns:
        Boolean tensor of shape ``(H, W)``.
    """
    ys, xs = _pixel_grid(height, width, device or torch.device("cpu"))
    dy, dx = ys - center[0], xs - center[1]
    cos, sin = math.cos(angle), math.sin(angle)
    along = dx * cos + dy * sin
    across = -dx * sin + dy * cos
    return (along.abs() <= size[1] / 2) & (across.abs() <= size[0] / 2)


def polyline_mask(
    height: int,
    width: int,
    points: torch.Tensor,
    thickness: float,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean mask of a polyline drawn with a round brush.

    A pixel is inside when its centre lies within ``thickness / 2`` of a segment; all segments are evaluated at once.

    Args:
        height: Image height.
        width: Image width.
        points: ``(N, 2)`` tensor of ``(y, x)`` vertices (``N >= 1``); or ``(S, 2, 2)`` independent segments.
        thickness: Brush diameter in pixels.
        device: Device of the mask.

    Returns:
        Boolean tensor of shape ``(H, W)``.
    """
    device = device or torch.device("cpu")
    points = points.to(device=device, dtype=torch.float32)
    if points.ndim == 2:
        points = points if len(points) > 1 else points.repeat(2, 1)
        segments = torch.stack((points[:-1], points[1:]), dim=1)  # (S, 2, 2)
    else:
        segments = points
    ys, xs = _pixel_grid(height, width, device)
    pixels = torch.stack((ys.reshape(-1), xs.reshape(-1)), dim=-1)  # (P, 2)
    start, direction = segments[:, 0], segments[:, 1] - segments[:, 0]  # (S, 2)
    length_sq = (direction**2).sum(-1).clamp_min(1e-12)  # (S,)
    rel = pixels[None] - start[:, None]  # (S, P, 2)
    t = ((rel * direction[:, None]).sum(-1) / length_sq[:, None]).clamp(0, 1)  # (S, P)
    dist_sq = ((rel - t[..., None] * direction[:, None]) ** 2).sum(-1).amin(0)  # (P,)
    # Half a pixel of slack keeps 1-px lines 8-connected at any angle.
    radius = max(thickness / 2, 0.5)
    return (dist_sq <= radius**2 + 1e-6).reshape(height, width)


class DefectGenerator(nn.Module):
    """Base class of the synthetic defect generators.

    The skeleton every kind shares: :meth:`forward` handles batches (the next image of the batch is the ``source`` of
    cut-paste kinds) and :meth:`_generate_one` retries until the mask is non-empty, then :meth:`_finalize` blends:
    clamps to ``[0, 1]``, keeps the original outside the mask and pushes weakly changed masked pixels ``min_diff``
    away, so the mask is exact. A kind states only what differs: its options (``**base`` passes ``min_diff`` and
    ``seed`` on; :attr:`default_min_diff`, :attr:`soft_edge`) and :meth:`_generate`, which samples the shape (the
    module's mask functions) and returns the painted image (painting the whole image is fine) with the mask.

    Args:
        min_diff: Minimal absolute change (max over channels) of every masked pixel. Masked pixels that changed less
            are pushed ``min_diff`` away from the original (F2PAD's "far from the original" check; F2PAD rescales the
            pixel by a factor, we shift it, which also works for black and white pixels). ``None``: the kind's
            :attr:`default_min_diff`.
        seed: Seed of the internal ``torch.Generator`` used when ``forward`` gets no generator. ``None`` draws the
            seed from torch's global generator (so ``torch.manual_seed`` makes it reproducible too).
        max_tries: Attempts to get a non-empty mask before falling back to a small square.
    """

    #: Keep changes just outside the mask (a faint halo, below the annotated level) instead of restoring them.
    soft_edge = False
    #: ``min_diff`` when none is given (smaller for the faint kinds).
    default_min_diff = 0.1

    def __init__(self, min_diff: float | None = None, seed: int | None = None, max_tries: int = 10) -> None:
        super().__init__()
        min_diff = self.default_min_diff if min_diff is None else min_diff
        if not 0.0 < min_diff <= 0.5:
            msg = f"min_diff must be in (0, 0.5], got {min_diff}."
            raise ValueError(msg)
        self.min_diff = float(min_diff)
        self.max_tries = int(max_tries)
        self.seed = seed
        self._generator = torch.Generator()
        self.manual_seed(seed)

    def manual_seed(self, seed: int | None = None) -> None:
        """Reseed the internal generator (``None``: draw a seed from torch's global generator)."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self._generator.manual_seed(int(seed))

    def forward(
        self,
        image: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one synthetic defect to each image.

        Args:
            image: Float tensor in ``[0, 1]`` of shape ``(C, H, W)`` or ``(B, C, H, W)``.
            generator: Optional ``torch.Generator`` (CPU) for reproducibility; the internal one when ``None``.

        Returns:
            Tuple ``(defective_image, mask)``: the image with the input's shape and dtype, and a float mask in
            ``{0, 1}`` of shape ``(1, H, W)`` or ``(B, 1, H, W)``.

        Raises:
            ValueError: If the image is not a floating point tensor of shape ``(C, H, W)`` or ``(B, C, H, W)``.
        """
        self._check_image(image)
        generator = self._generator if generator is None else generator
        if image.ndim == 3:
            return self._generate_one(image, generator, None)
        outputs, masks = [], []
        for index in range(image.shape[0]):
            source = image[(index + 1) % image.shape[0]] if image.shape[0] > 1 else None
            out, mask = self._generate_one(image[index], generator, source)
            outputs.append(out)
            masks.append(mask)
        return torch.stack(outputs), torch.stack(masks)

    @staticmethod
    def _check_image(image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor):
            msg = f"image must be a torch.Tensor, got {type(image).__name__}."
            raise TypeError(msg)
        if image.ndim not in {3, 4}:
            msg = f"image must have shape (C, H, W) or (B, C, H, W), got {tuple(image.shape)}."
            raise ValueError(msg)
        if not image.is_floating_point():
            msg = f"image must be a floating point tensor in [0, 1], got dtype {image.dtype}."
            raise ValueError(msg)
        if image.shape[-1] < 2 or image.shape[-2] < 2 or image.shape[-3] < 1:
            msg = f"image is too small for a synthetic defect: shape {tuple(image.shape)}."
            raise ValueError(msg)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        """Return a candidate ``(defective_image (C, H, W), mask (H, W) bool)`` for one image.

        Args:
            image: ``(C, H, W)`` image in ``[0, 1]``.
            generator: Random generator to draw from.
            source: Another normal image of the batch (``None`` for single images) to cut patches from.
        """
        raise NotImplementedError

    def _generate_one(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        """Generate with retries and make the mask exact; returns ``(image (C, H, W), mask (1, H, W))``."""
        original = image.float()
        candidate, mask = original, torch.zeros(image.shape[-2:], dtype=torch.bool, device=image.device)
        for _ in range(self.max_tries):
            candidate, mask = self._generate(original, generator, source)
            mask = mask.to(device=image.device, dtype=torch.bool)
            if mask.any():
                break
        if not mask.any():  # fallback: a small square, so the mask is never empty
            height, width = image.shape[-2:]
            side = max(1, min(height, width) // 8)
            top, left = _randint(generator, 0, height - side), _randint(generator, 0, width - side)
            mask = torch.zeros_like(mask)
            mask[top : top + side, left : left + side] = True
            candidate = original
        out = self._finalize(original, candidate, mask)
        return out.to(image.dtype), mask[None].to(image.dtype)

    def _finalize(self, original: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Clamp, keep the original outside ``mask`` and push weakly changed masked pixels ``min_diff`` away.

        Soft-edged kinds (``soft_edge``) keep their faint halo outside the mask.
        """
        candidate = candidate.clamp(0, 1)
        weak = mask & ((candidate - original).abs().amax(0) < self.min_diff)
        pushed = torch.where(original < 0.5, original + self.min_diff, original - self.min_diff)
        candidate = torch.where(weak[None], pushed, candidate)
        return candidate if self.soft_edge else torch.where(mask[None], candidate, original)

    @staticmethod
    def _random_color(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random colour of shape ``(C, 1, 1)`` (grey for single-channel images)."""
        color = torch.rand(image.shape[0], 1, 1, generator=generator)
        return color.to(image.device, image.dtype)

    @staticmethod
    def _shifted_patch(
        image: torch.Tensor,
        source: torch.Tensor | None,
        generator: torch.Generator,
        jitter: float,
    ) -> torch.Tensor:
        """``source`` (or ``image`` itself) circularly shifted by a random offset, with brightness/colour jitter.

        Pasting it under a mask copies the content of another location (CutPaste) without a Python loop over pixels.
        """
        src = image if source is None else source.to(image.device, image.dtype)
        height, width = image.shape[-2:]
        # At least a quarter of the image away, so the pasted content does not match its surroundings.
        dy = _randint(generator, max(1, height // 4), max(1, height - height // 4))
        dx = _randint(generator, max(1, width // 4), max(1, width - width // 4))
        patch = torch.roll(src, shifts=(dy, dx), dims=(-2, -1))
        if jitter > 0:
            gain = 1 + (torch.rand(image.shape[0], 1, 1, generator=generator) * 2 - 1) * jitter
            shift = (torch.rand(image.shape[0], 1, 1, generator=generator) * 2 - 1) * jitter / 2
            patch = patch * gain.to(patch) + shift.to(patch)
        return patch


class CutPaste(DefectGenerator):
    """Rectangle defect filled with a random colour or a patch from another image.

    ``mode="color"`` is F2PAD's eq. 16, ``X = (1 - m) * n + m * a`` with a random colour ``a``; ``mode="patch"`` is
    CutPaste (the patch comes from the next image of the batch, or another location of the same image for single
    images, with colour jitter); ``mode="mixed"`` picks one of the two per image.

    Args:
        mode: ``"color"``, ``"patch"`` or ``"mixed"``.
        area_range: Rectangle area relative to the image area.
        aspect_range: Range of width / height ratios (sampled log-uniformly).
        rotation_range: Rotation range in degrees.
        jitter: Strength of the brightness/colour jitter of pasted patches.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    MODES = ("color", "patch", "mixed")

    def __init__(
        self,
        mode: str = "color",
        area_range: tuple[float, float] = (0.02, 0.15),
        aspect_range: tuple[float, float] = (0.3, 3.3),
        rotation_range: tuple[float, float] = (0.0, 0.0),
        jitter: float = 0.3,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if mode not in self.MODES:
            msg = f"mode must be one of {self.MODES}, got {mode!r}."
            raise ValueError(msg)
        self.mode = mode
        self.area_range = _check_range("area_range", area_range, 0.0, 1.0)
        self.aspect_range = _check_range("aspect_range", aspect_range, 1e-3)
        self.rotation_range = _check_range("rotation_range", rotation_range, -360.0, 360.0)
        self.jitter = float(jitter)

    def _shape_mask(self, height: int, width: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        area = _uniform(generator, *self.area_range) * height * width
        aspect = math.exp(_uniform(generator, math.log(self.aspect_range[0]), math.log(self.aspect_range[1])))
        rect_h = min(max(math.sqrt(area / aspect), 1.0), height)
        rect_w = min(max(math.sqrt(area * aspect), 1.0), width)
        center = (float(_randint(generator, 0, height - 1)), float(_randint(generator, 0, width - 1)))
        angle = math.radians(_uniform(generator, *self.rotation_range))
        return rotated_rectangle_mask(height, width, center, (rect_h, rect_w), angle, device)

    def _fill(self, image: torch.Tensor, source: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        mode = self.mode
        if mode == "mixed":
            mode = "color" if _uniform(generator, 0, 1) < 0.5 else "patch"
        if mode == "color":
            return self._random_color(image, generator).expand_as(image)
        return self._shifted_patch(image, source, generator, self.jitter)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        mask = self._shape_mask(image.shape[-2], image.shape[-1], generator, image.device)
        return self._fill(image, source, generator), mask  # the base keeps the original outside the mask


class CutPasteScar(CutPaste):
    """CutPaste "scar": a thin, long, rotated rectangle filled with a patch (or colour).

    Args:
        mode: ``"patch"`` (default, as in CutPaste), ``"color"`` or ``"mixed"``.
        length_range: Scar length relative to the shorter image side.
        width_range: Scar width relative to the shorter image side (at least ``min_width`` pixels).
        min_width: Minimal width in pixels.
        rotation_range: Rotation range in degrees.
        jitter: Strength of the brightness/colour jitter of pasted patches.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        mode: str = "patch",
        length_range: tuple[float, float] = (0.1, 0.35),
        width_range: tuple[float, float] = (0.01, 0.05),
        min_width: float = 1.0,
        rotation_range: tuple[float, float] = (-45.0, 45.0),
        jitter: float = 0.3,
        **base: Any,
    ) -> None:
        super().__init__(mode=mode, rotation_range=rotation_range, jitter=jitter, **base)
        self.length_range = _check_range("length_range", length_range, 0.0)
        self.width_range = _check_range("width_range", width_range, 0.0)
        self.min_width = float(min_width)

    def _shape_mask(self, height: int, width: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        side = min(height, width)
        length = max(_uniform(generator, *self.length_range) * side, 2.0)
        thickness = max(_uniform(generator, *self.width_range) * side, self.min_width)
        center = (float(_randint(generator, 0, height - 1)), float(_randint(generator, 0, width - 1)))
        # The scar is vertical before rotation, as in CutPaste.
        angle = math.radians(90.0 + _uniform(generator, *self.rotation_range))
        return rotated_rectangle_mask(height, width, center, (thickness, length), angle, device)


# anomalib's Perlin generator draws noise scales up to 2**5 cells and pads each side to the next power of two: a side of
# 16 px or less leaves cells of 0 px and fails deep inside anomalib. Smallest working side (found by experiment): 17.
PERLIN_MIN_SIZE = 17


class PerlinDefect(DefectGenerator):
    """DRAEM-style Perlin-noise defect, using anomalib's :class:`PerlinAnomalyGenerator`.

    anomalib's generator draws from torch's global random state; it is run inside ``torch.random.fork_rng`` seeded
    from our generator, so it is reproducible and leaves the global state untouched. Single-channel images are
    expanded to RGB for anomalib's colour augmentations and averaged back.

    Args:
        anomaly_source_path: Optional folder of texture images (DTD in DRAEM) used as anomaly source.
        blend_range: Range of the blend factor ``beta`` of the anomaly over the image.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        anomaly_source_path: str | None = None,
        blend_range: tuple[float, float] = (0.2, 1.0),
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.blend_range = _check_range("blend_range", blend_range, 0.0, 1.0)
        # anomalib draws its solarize threshold at construction from the global state: seed it for reproducibility.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if self.seed is None else self.seed)
            self.perlin = PerlinAnomalyGenerator(
                anomaly_source_path=anomaly_source_path,
                probability=1.0,
                blend_factor=self.blend_range,
            )

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        if min(image.shape[-2:]) < PERLIN_MIN_SIZE:
            msg = (
                f"PerlinDefect: image too small for anomalib's Perlin generator: {image.shape[-2]}x{image.shape[-1]} "
                f"px, needs at least {PERLIN_MIN_SIZE} px per side."
            )
            raise ValueError(msg)
        channels = image.shape[0]
        rgb = image.expand(3, -1, -1) if channels == 1 else image[:3]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out, mask = self.perlin(rgb.contiguous())
        if channels == 1:
            out = out.mean(0, keepdim=True)
        elif channels > 3:
            out = torch.cat((out, image[3:]), dim=0)
        return out, mask[0] > 0.5


class HandDrawnDefect(DefectGenerator):
    """Hand-drawn-like brush strokes (PNI's "manual drawing" defects).

    Each stroke is a smooth random walk (turning by at most ``max_turn`` degrees per step) drawn with a round brush
    in a random colour.

    Args:
        num_strokes: Range of the number of strokes.
        num_points: Range of the number of vertices per stroke.
        step_range: Step length relative to the shorter image side.
        thickness_range: Brush diameter relative to the shorter image side (at least ``min_thickness`` pixels).
        min_thickness: Minimal brush diameter in pixels.
        max_turn: Maximal turning angle between steps in degrees.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        num_strokes: tuple[int, int] = (1, 3),
        num_points: tuple[int, int] = (3, 7),
        step_range: tuple[float, float] = (0.08, 0.2),
        thickness_range: tuple[float, float] = (0.015, 0.05),
        min_thickness: float = 1.0,
        max_turn: float = 60.0,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.num_strokes = tuple(int(v) for v in _check_range("num_strokes", num_strokes, 1))
        self.num_points = tuple(int(v) for v in _check_range("num_points", num_points, 2))
        self.step_range = _check_range("step_range", step_range, 0.0)
        self.thickness_range = _check_range("thickness_range", thickness_range, 0.0)
        self.min_thickness = float(min_thickness)
        self.max_turn = float(max_turn)

    def _walk(
        self,
        height: int,
        width: int,
        num_points: int,
        step: float,
        turn: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Vertices ``(num_points, 2)`` of a random walk with bounded turning, starting inside the image."""
        start = torch.rand(2, generator=generator) * torch.tensor([height - 1, width - 1], dtype=torch.float32)
        heading = torch.rand(1, generator=generator) * 2 * math.pi
        turns = (torch.rand(num_points - 1, generator=generator) * 2 - 1) * math.radians(turn)
        angles = heading + torch.cumsum(turns, 0)
        steps = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1) * step
        return torch.cat((start[None], start[None] + torch.cumsum(steps, 0)), dim=0)

    def _stroke_color(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._random_color(image, generator)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        side = min(height, width)
        out, mask = image, torch.zeros(height, width, dtype=torch.bool, device=image.device)
        for _ in range(_randint(generator, *self.num_strokes)):
            points = self._walk(
                height,
                width,
                _randint(generator, *self.num_points),
                _uniform(generator, *self.step_range) * side,
                self.max_turn,
                generator,
            )
            thickness = max(_uniform(generator, *self.thickness_range) * side, self.min_thickness)
            stroke = polyline_mask(height, width, points, thickness, image.device)
            out = torch.where(stroke[None], self._stroke_color(image, generator).expand_as(image), out)
            mask |= stroke
        return out, mask


class CrackDefect(HandDrawnDefect):
    """Thin, jagged, branching cracks that darken the surface (PAEDID's simulated wood cracks).

    A crack is a random walk of short steps (at least 1.5 pixels) whose heading drifts by Gaussian increments, grown
    both ways from a point in the central part of the image, with optional shorter branches. It is drawn
    ``max(width * side, min_width)`` pixels wide and darkened by a factor drawn from ``darkness_range``.

    Args:
        length_range: Crack length relative to the shorter image side.
        width_range: Crack width relative to the shorter image side (at least ``min_width`` pixels).
        min_width: Minimal width in pixels.
        num_branches: Range of the number of branches.
        jaggedness: Standard deviation of the heading change per step in degrees.
        darkness_range: Range of the multiplicative darkening inside the crack.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        length_range: tuple[float, float] = (0.4, 0.9),
        width_range: tuple[float, float] = (0.0, 0.015),
        min_width: float = 1.0,
        num_branches: tuple[int, int] = (0, 2),
        jaggedness: float = 25.0,
        darkness_range: tuple[float, float] = (0.1, 0.5),
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.length_range = _check_range("length_range", length_range, 0.0)
        self.width_range = _check_range("width_range", width_range, 0.0)
        self.min_width = float(min_width)
        self.num_branches = tuple(int(v) for v in _check_range("num_branches", num_branches, 0))
        self.jaggedness = float(jaggedness)
        self.darkness_range = _check_range("darkness_range", darkness_range, 0.0, 1.0)

    def _jagged_walk(
        self,
        start: torch.Tensor,
        heading: float,
        length: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        step = max(1.5, length / 40)
        num_steps = max(2, math.ceil(length / step))
        turns = torch.randn(num_steps, generator=generator) * math.radians(self.jaggedness)
        angles = heading + torch.cumsum(turns, 0)
        steps = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1) * step
        return torch.cat((start[None], start[None] + torch.cumsum(steps, 0)), dim=0)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        side = min(height, width)
        length = _uniform(generator, *self.length_range) * side
        # The crack grows both ways from a point in the central 60 % of the image, so most of it is visible.
        size = torch.tensor([height - 1, width - 1], dtype=torch.float32)
        middle = (0.2 + 0.6 * torch.rand(2, generator=generator)) * size
        heading = _uniform(generator, 0, 2 * math.pi)
        first = self._jagged_walk(middle, heading, length / 2, generator)
        second = self._jagged_walk(middle, heading + math.pi, length / 2, generator)
        main = torch.cat((first.flip(0), second[1:]), dim=0)
        paths = [main]
        for _ in range(_randint(generator, *self.num_branches)):
            origin = main[_randint(generator, 1, len(main) - 1)]
            branch_heading = heading + math.copysign(_uniform(generator, 0.3, 1.2), _uniform(generator, -1, 1))
            paths.append(self._jagged_walk(origin, branch_heading, length * _uniform(generator, 0.2, 0.5), generator))
        segments = torch.cat([torch.stack((p[:-1], p[1:]), dim=1) for p in paths], dim=0)
        thickness = max(_uniform(generator, *self.width_range) * side, self.min_width)
        mask = polyline_mask(height, width, segments, thickness, image.device)
        darkness = _uniform(generator, *self.darkness_range)
        return image * darkness, mask


def _log_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """Draw one float log-uniformly from ``[low, high)`` (sizes spanning decades)."""
    return math.exp(_uniform(generator, math.log(low), math.log(high)))


def _random_center(height: int, width: int, generator: torch.Generator, margin: float = 0.1) -> tuple[float, float]:
    """A ``(y, x)`` point at least ``margin`` of the size away from the borders."""
    return (
        _uniform(generator, margin, 1 - margin) * (height - 1),
        _uniform(generator, margin, 1 - margin) * (width - 1),
    )


def irregular_blob(
    height: int,
    width: int,
    center: tuple[float, float],
    radius: float,
    generator: torch.Generator,
    irregularity: float = 0.3,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Normalised radial distance ``d / r(theta)`` of every pixel to an irregular blob's boundary ``(H, W)``.

    The boundary radius ``r(theta) = radius (1 + sum_k a_k cos(k theta + phi_k))`` (k = 2..4) makes a smooth,
    non-circular outline; values < 1 are inside. Soft and hard shapes are functions of this field.
    """
    ys, xs = _pixel_grid(height, width, device or torch.device("cpu"))
    dy, dx = ys - center[0], xs - center[1]
    theta = torch.atan2(dy, dx)
    harmonics = torch.arange(2, 5, dtype=torch.float32)
    amplitude = torch.rand(3, generator=generator) * irregularity / harmonics
    phase = torch.rand(3, generator=generator) * 2 * math.pi
    wobble = (
        amplitude.to(theta.device)[:, None, None]
        * torch.cos(harmonics.to(theta.device)[:, None, None] * theta + phase.to(theta.device)[:, None, None])
    ).sum(0)
    boundary = radius * (1 + wobble).clamp_min(0.3)
    return torch.sqrt(dy**2 + dx**2) / boundary


def _random_blob(
    height: int,
    width: int,
    area_range: tuple[float, float],
    generator: torch.Generator,
    outer: float = 1.0,
) -> torch.Tensor:
    """:func:`irregular_blob` distance field of a blob whose area is drawn log-uniformly from ``area_range``.

    With ``outer > 1`` the area is that of the blob scaled by ``outer`` (distance < ``outer``): a core with a ring.
    """
    radius = math.sqrt(_log_uniform(generator, *area_range) * height * width / math.pi) / outer
    return irregular_blob(height, width, _random_center(height, width, generator), radius, generator)


def _fade(position: torch.Tensor, peak: float | torch.Tensor, floor: float, gamma: float = 1.0) -> torch.Tensor:
    """Change magnitude fading from ``peak`` at ``position`` 0 to ``floor`` at 1 (``(1 - position) ** gamma`` ramp)."""
    return floor + (peak - floor) * (1 - position.clamp(0, 1)) ** gamma


class StainDefect(DefectGenerator):
    """Soft-edged, low-contrast stain or discolouration (a tinted blob with a smooth boundary).

    The colour shift fades smoothly across the boundary: the mask is where at least half the peak shift is applied
    (what an annotator would mark); the faint halo outside it stays in the image (``soft_edge``), as real stains do.

    Args:
        area_range: Range of the masked area relative to the image area (sampled log-uniformly).
        contrast_range: Range of the peak intensity shift.
        softness: Width of the fading boundary relative to the radius.
        tint: Strength of the colour difference between channels (0: the same shift in every channel).
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    soft_edge = True
    default_min_diff = 0.04  # stains are faint

    def __init__(
        self,
        area_range: tuple[float, float] = (0.003, 0.10),
        contrast_range: tuple[float, float] = (0.08, 0.2),
        softness: float = 0.3,
        tint: float = 0.3,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.area_range = _check_range("area_range", area_range, 1e-6, 1.0)
        self.contrast_range = _check_range("contrast_range", contrast_range, 0.0, 1.0)
        self.softness = float(softness)
        self.tint = float(tint)

    def _profile(self, distance: torch.Tensor) -> torch.Tensor:
        """Share of the peak change at normalised distance ``distance`` (0.5 on the boundary)."""
        return torch.sigmoid((1 - distance) / max(self.softness, 1e-3) * 4)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        distance = _random_blob(height, width, self.area_range, generator)
        alpha = self._profile(distance.to(image.device))
        sign = 1.0 if _uniform(generator, 0, 1) < 0.5 else -1.0
        shift = sign * _uniform(generator, *self.contrast_range)
        out = image + alpha[None] * shift * self._channel_weights(image, generator)
        return out, alpha >= 0.5

    def _channel_weights(self, image: Tensor, generator: Generator) -> Tensor:
        """Per-channel share ``(C, 1, 1)`` of the shift: ``1 - tint * u`` with ``u`` uniform in ``[0, 1)``."""
        return (1 - self.tint * torch.rand(image.shape[0], 1, 1, generator=generator)).to(image)

    @property
    def faint_level(self) -> float:
        """Smallest change the faint-extent kinds paint in their mask: 10 % above ``min_diff``.

        The margin keeps float rounding and 8-bit PNG quantisation (half a grey level, 0.002) from pushing the
        faintest annotated pixels below ``min_diff``.
        """
        return 1.1 * self.min_diff


class BurnDefect(StainDefect):
    """Burn mark: a dark blob whose darkening falls off radially from its centre, with an irregular outline.

    The image is multiplied by ``1 - depth * g`` with a radial gradient ``g`` (1 at the centre); the mask is where
    the darkening is at least a third of its peak.

    Args:
        area_range: Range of the masked area relative to the image area (sampled log-uniformly).
        depth_range: Range of the peak darkening factor.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    default_min_diff = 0.05

    def __init__(
        self,
        area_range: tuple[float, float] = (0.001, 0.05),
        depth_range: tuple[float, float] = (0.5, 0.9),
        **base: Any,
    ) -> None:
        super().__init__(area_range=area_range, **base)
        self.depth_range = _check_range("depth_range", depth_range, 0.0, 1.0)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        distance = _random_blob(height, width, self.area_range, generator)
        out, gradient = self._char(image, distance, generator)
        return out, gradient >= 1 / 3

    def _char(self, image: Tensor, distance: Tensor, generator: Generator) -> Pair:
        """Darken ``image`` around the blob of ``distance``; returns the image and the gradient ``g`` ``(H, W)``."""
        # Gaussian fall-off reaching 1/3 of the peak on the boundary (distance 1).
        gradient = torch.exp(-math.log(3.0) * distance.to(image.device) ** 2)
        depth = _uniform(generator, *self.depth_range)
        return image * (1 - depth * gradient[None]), gradient


class PittingDefect(DefectGenerator):
    """Pitting: a cluster of tiny dark (or bright) spots.

    Args:
        num_spots: Range of the number of spots in the cluster.
        cluster_radius: Range of the cluster radius relative to the shorter image side.
        spot_radius: Range of the spot radius relative to the shorter image side (at least ``min_radius`` px).
        min_radius: Minimal spot radius in pixels.
        contrast_range: Range of the spot contrast.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        num_spots: tuple[int, int] = (2, 20),
        cluster_radius: tuple[float, float] = (0.02, 0.12),
        spot_radius: tuple[float, float] = (0.003, 0.015),
        min_radius: float = 0.6,
        contrast_range: tuple[float, float] = (0.25, 0.6),
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.num_spots = tuple(int(v) for v in _check_range("num_spots", num_spots, 1))
        self.cluster_radius = _check_range("cluster_radius", cluster_radius, 0.0)
        self.spot_radius = _check_range("spot_radius", spot_radius, 0.0)
        self.min_radius = float(min_radius)
        self.contrast_range = _check_range("contrast_range", contrast_range, 0.0, 1.0)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        side = min(height, width)
        count = _randint(generator, *self.num_spots)
        center = torch.tensor(_random_center(height, width, generator))
        spread = _uniform(generator, *self.cluster_radius) * side
        angle = torch.rand(count, generator=generator) * 2 * math.pi
        reach = torch.sqrt(torch.rand(count, generator=generator)) * spread  # uniform over the disc
        spots = center + torch.stack((torch.sin(angle), torch.cos(angle)), -1) * reach[:, None]
        low, high = self.spot_radius
        radii = (low + (high - low) * torch.rand(count, generator=generator)) * side
        radii = radii.clamp_min(self.min_radius)
        ys, xs = _pixel_grid(height, width, image.device)
        dist_sq = (ys[None] - spots[:, 0, None, None].to(ys)) ** 2 + (xs[None] - spots[:, 1, None, None].to(xs)) ** 2
        mask = (dist_sq <= radii.to(ys)[:, None, None] ** 2).any(0)
        contrast = _uniform(generator, *self.contrast_range)
        out = image - contrast if _uniform(generator, 0, 1) < 0.7 else image + contrast  # mostly dark pits
        return out, mask


class ScratchDefect(HandDrawnDefect):
    """Thin, low-contrast scratch: a long, gently curved line one or two pixels wide, slightly brighter or darker.

    Args:
        length_range: Scratch length relative to the shorter image side.
        width_range: Line width in pixels.
        contrast_range: Range of the intensity change.
        max_turn: Maximal turning angle between the segments in degrees.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    default_min_diff = 0.06  # scratches are faint

    def __init__(
        self,
        length_range: tuple[float, float] = (0.2, 0.8),
        width_range: tuple[float, float] = (1.0, 2.0),
        contrast_range: tuple[float, float] = (0.08, 0.2),
        max_turn: float = 12.0,
        **base: Any,
    ) -> None:
        super().__init__(max_turn=max_turn, **base)
        self.length_range = _check_range("length_range", length_range, 0.0)
        self.width_range = _check_range("width_range", width_range, 0.0)
        self.contrast_range = _check_range("contrast_range", contrast_range, 0.0, 1.0)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        segments = 4
        length = _uniform(generator, *self.length_range) * min(height, width)
        points = self._walk(height, width, segments + 1, length / segments, self.max_turn, generator)
        mask = polyline_mask(height, width, points, _uniform(generator, *self.width_range), image.device)
        shift = _uniform(generator, *self.contrast_range) * (1.0 if _uniform(generator, 0, 1) < 0.5 else -1.0)
        return image + shift, mask


class TextureSwapDefect(DefectGenerator):
    """Large cut-paste / texture-swap region: an irregular blob filled with another image's texture.

    The fill is the batch's next image (or the image itself), rotated by 90 degrees, rescaled by a factor from
    ``scale_range`` and shifted, so both the texture's orientation and grain differ from the surroundings.

    Args:
        area_range: Range of the region area relative to the image area (sampled log-uniformly).
        scale_range: Range of the texture rescaling factor.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        area_range: tuple[float, float] = (0.02, 0.10),
        scale_range: tuple[float, float] = (0.6, 1.6),
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.area_range = _check_range("area_range", area_range, 1e-6, 1.0)
        self.scale_range = _check_range("scale_range", scale_range, 0.1, 10.0)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        distance = _random_blob(height, width, self.area_range, generator)
        src = image if source is None else source.to(image)
        src = torch.rot90(src, _randint(generator, 1, 3), dims=(-2, -1))
        scale = _uniform(generator, *self.scale_range)
        size = (max(2, round(src.shape[-2] * scale)), max(2, round(src.shape[-1] * scale)))
        src = torch.nn.functional.interpolate(src[None], size=size, mode="bilinear", align_corners=False)[0]
        # Tile the rescaled texture over the image, then shift it.
        reps = (math.ceil(height / size[0]) + 1, math.ceil(width / size[1]) + 1)
        tiled = src.repeat(1, *reps)
        top, left = _randint(generator, 0, size[0] - 1), _randint(generator, 0, size[1] - 1)
        fill = tiled[:, top : top + height, left : left + width]
        return fill, distance.to(image.device) < 1


def _halo_tint(image: Tensor, tint: float, generator: Generator) -> Tensor:
    """Per-channel share ``(C, 1, 1)`` of a yellowish-brown darkening: 1 in the last channel (blue), least in the first.

    Channel ``c`` of ``C`` gets ``1 - tint * u_c * (C - 1 - c) / (C - 1)`` with ``u_c`` uniform in ``[0.5, 1)``; a
    single channel gets 1.
    """
    channels = image.shape[0]
    spread = 0.5 + 0.5 * torch.rand(channels, generator=generator)
    order = torch.linspace(1, 0, channels) if channels > 1 else torch.zeros(1)
    return (1 - tint * spread * order).view(-1, 1, 1).to(image)


class HaloBurnDefect(BurnDefect):
    """Burn with a faint halo: a charred core (:class:`BurnDefect`'s darkening) inside a brownish-tinted ring.

    The core is a :class:`BurnDefect` blob of radius ``r``. Around it, out to ``outer * r`` (``outer`` from
    ``halo_range``), the surface is faintly discoloured: darkened most in the last channel and least in the first (a
    yellowish-brown tint on RGB images, a colour change even on grey ones). The halo's change fades linearly from its
    peak at the core's edge to :attr:`faint_level` (just above ``min_diff``) at the outer edge, where the mask ends:
    a hard edge, pixels outside the mask are unchanged. The mask is core + halo, the whole visibly altered region
    (the convention of MVTec AD); the halo covers ``1 - 1 / outer**2`` of it (41-56 %, less where the image border
    clips the ring).

    The halo's peak is ``halo_strength`` times the core's mean change (max over channels), at least
    :attr:`faint_level`, so the halo's mean change stays below a quarter of the core's, except where the background
    is too dark for the core to change much (mean intensity below ~0.25).

    Args:
        area_range: Range of the masked area (core + halo) relative to the image area (sampled log-uniformly).
        depth_range: Range of the core's peak darkening factor.
        halo_range: Range of the halo's outer radius relative to the core's radius.
        halo_strength: Range of the halo's peak change relative to the core's mean change.
        tint: Spread of the halo's change between channels (0: grey); see :func:`_halo_tint`.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    soft_edge = False
    default_min_diff = 0.03  # the halo is faint

    def __init__(
        self,
        area_range: tuple[float, float] = (0.001, 0.08),
        depth_range: tuple[float, float] = (0.6, 0.9),
        halo_range: tuple[float, float] = (1.3, 1.5),
        halo_strength: tuple[float, float] = (0.12, 0.22),
        tint: float = 0.6,
        **base: Any,
    ) -> None:
        super().__init__(area_range=area_range, depth_range=depth_range, **base)
        self.halo_range = _check_range("halo_range", halo_range, 1.0 + 1e-3)
        self.halo_strength = _check_range("halo_strength", halo_strength, 0.0)
        self.tint = float(tint)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        outer = _uniform(generator, *self.halo_range)
        distance = _random_blob(height, width, self.area_range, generator, outer).to(image.device)
        charred, gradient = self._char(image, distance, generator)
        core = gradient >= 1 / 3  # BurnDefect's mask
        core_change = float((charred - image).abs().amax(0)[core].mean()) if core.any() else 0.0
        peak = max(core_change * _uniform(generator, *self.halo_strength), self.faint_level)
        ring = _fade((distance - 1) / (outer - 1), peak, self.faint_level)
        halo = image - ring[None] * _halo_tint(image, self.tint, generator)
        return torch.where(core[None], charred, halo), distance < outer


class FadingDiscolourationDefect(StainDefect):
    """Discolouration fading out gradually: strongest at one side (linear ramp) or the centre (radial ramp).

    An irregular blob is tinted (:class:`StainDefect`'s colour shift, scaled so the strongest channel gets the full
    change) with a magnitude falling from ``contrast`` to :attr:`faint_level` (just above ``min_diff``) as
    ``(1 - t) ** gamma``, where ``t`` runs from 0 to 1 across the blob along a random direction, or from its centre to
    its outline. The mask is the whole blob, the whole visibly altered region down to the ``min_diff`` level, so most
    of it is low contrast; it ends with a hard edge (pixels outside it are unchanged).

    Args:
        area_range: Range of the masked area relative to the image area (sampled log-uniformly).
        contrast_range: Range of the peak change.
        fade_range: Range of the fade exponent ``gamma`` (larger: the strong part is narrower).
        radial_share: Probability of a radial (centre-out) rather than a linear (side-to-side) fade.
        tint: Strength of the colour difference between channels (0: the same shift in every channel).
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    soft_edge = False
    default_min_diff = 0.03  # most of the region is faint

    def __init__(
        self,
        area_range: tuple[float, float] = (0.001, 0.08),
        contrast_range: tuple[float, float] = (0.12, 0.3),
        fade_range: tuple[float, float] = (1.0, 2.5),
        radial_share: float = 0.5,
        tint: float = 0.4,
        **base: Any,
    ) -> None:
        super().__init__(area_range=area_range, contrast_range=contrast_range, tint=tint, **base)
        self.fade_range = _check_range("fade_range", fade_range, 0.1)
        self.radial_share = float(radial_share)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        distance = _random_blob(height, width, self.area_range, generator).to(image.device)
        inside = distance < 1
        angle = _uniform(generator, 0, 2 * math.pi)
        if _uniform(generator, 0, 1) < self.radial_share or not inside.any():
            position = distance
        else:
            ys, xs = _pixel_grid(height, width, image.device)
            along = xs * math.cos(angle) + ys * math.sin(angle)
            low, high = along[inside].min(), along[inside].max()
            position = (along - low) / (high - low).clamp_min(1.0)
        gamma = _uniform(generator, *self.fade_range)
        sign = 1.0 if _uniform(generator, 0, 1) < 0.5 else -1.0
        peak = max(_uniform(generator, *self.contrast_range), self.faint_level)
        magnitude = _fade(position, peak, self.faint_level, gamma)
        channel = self._channel_weights(image, generator)
        return image + sign * magnitude[None] * channel / channel.amax(), inside


class SoftRimStainDefect(StainDefect):
    """Stain with a moderately visible interior and a wide, soft, faint rim that belongs to the defect.

    The interior is a :class:`StainDefect` (change ``contrast``, a sigmoid edge of width ``softness`` at the blob's
    outline ``r``). Around it, out to ``outer * r`` (``outer`` from ``rim_range``), a rim fades linearly from
    ``rim_strength * contrast`` to :attr:`faint_level` (just above ``min_diff``); the change is the larger of the two.
    The mask is interior + rim, with a hard outer edge (pixels outside it are unchanged); the rim covers
    ``1 - 1 / outer**2`` of it (41-61 %, less where the image border clips it).

    Args:
        area_range: Range of the masked area (interior + rim) relative to the image area (sampled log-uniformly).
        contrast_range: Range of the interior's change.
        rim_range: Range of the rim's outer radius relative to the interior's radius.
        rim_strength: Range of the rim's peak change relative to the interior's.
        softness: Width of the interior's fading edge relative to its radius.
        tint: Strength of the colour difference between channels (0: the same shift in every channel).
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    soft_edge = False
    default_min_diff = 0.03  # the rim is faint

    def __init__(
        self,
        area_range: tuple[float, float] = (0.001, 0.08),
        contrast_range: tuple[float, float] = (0.12, 0.25),
        rim_range: tuple[float, float] = (1.3, 1.6),
        rim_strength: tuple[float, float] = (0.15, 0.3),
        softness: float = 0.12,
        tint: float = 0.3,
        **base: Any,
    ) -> None:
        super().__init__(area_range=area_range, contrast_range=contrast_range, softness=softness, tint=tint, **base)
        self.rim_range = _check_range("rim_range", rim_range, 1.0 + 1e-3)
        self.rim_strength = _check_range("rim_strength", rim_strength, 0.0)

    def _generate(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        height, width = image.shape[-2:]
        outer = _uniform(generator, *self.rim_range)
        distance = _random_blob(height, width, self.area_range, generator, outer).to(image.device)
        sign = 1.0 if _uniform(generator, 0, 1) < 0.5 else -1.0
        contrast = _uniform(generator, *self.contrast_range)
        rim_peak = max(contrast * _uniform(generator, *self.rim_strength), self.faint_level)
        rim = _fade((distance - 1) / (outer - 1), rim_peak, self.faint_level)
        magnitude = torch.maximum(contrast * self._profile(distance), rim)
        channel = self._channel_weights(image, generator)
        return image + sign * magnitude[None] * channel / channel.amax(), distance < outer


class MixedDefect(DefectGenerator):
    """Pick one generator per image at random.

    The default is PNI's training mixture: :class:`CutPaste` (patch), :class:`CutPasteScar`, :class:`PerlinDefect`
    and :class:`HandDrawnDefect`, in equal shares.

    Args:
        generators: The generators to choose from (their own seeds are not used: the mixture's generator drives all).
        weights: Relative weights of the generators; equal when ``None``.
        **base: ``min_diff`` and ``seed`` of :class:`DefectGenerator`.
    """

    def __init__(
        self,
        generators: Sequence[DefectGenerator] | None = None,
        weights: Sequence[float] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if generators is None:
            generators = [
                CutPaste(mode="patch", min_diff=self.min_diff),
                CutPasteScar(min_diff=self.min_diff),
                PerlinDefect(min_diff=self.min_diff),
                HandDrawnDefect(min_diff=self.min_diff),
            ]
        if len(generators) == 0:
            msg = "MixedDefect needs at least one generator."
            raise ValueError(msg)
        for gen in generators:
            if not isinstance(gen, DefectGenerator):
                msg = f"MixedDefect generators must be DefectGenerator instances, got {type(gen).__name__}."
                raise TypeError(msg)
        self.generators = nn.ModuleList(generators)
        weights = [1.0] * len(generators) if weights is None else [float(w) for w in weights]
        if len(weights) != len(generators) or any(w < 0 for w in weights) or sum(weights) <= 0:
            msg = f"weights must be {len(generators)} non-negative numbers with a positive sum, got {weights!r}."
            raise ValueError(msg)
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.last_choices: list[int] = []

    def choose(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices of the generators used for ``num`` images, drawn with the mixture weights."""
        generator = self._generator if generator is None else generator
        return torch.multinomial(self.weights, num, replacement=True, generator=generator)

    def _generate_one(self, image: Tensor, generator: Generator, source: Tensor | None) -> Pair:
        index = int(self.choose(1, generator).item())
        self.last_choices.append(index)
        return self.generators[index]._generate_one(image, generator, source)

    def forward(
        self,
        image: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`DefectGenerator.forward`; the chosen generator indices are stored in ``last_choices``."""
        self.last_choices = []
        return super().forward(image, generator)


def defect_generator(name: str, seed: int) -> DefectGenerator:
    """Generator of a named defect kind (names are the test/<defect> folder names of the embedded benchmark)."""
    factories = {
        "cut_paste_color": lambda: CutPaste(mode="color", seed=seed),
        "cut_paste_patch": lambda: CutPaste(mode="patch", seed=seed),
        "scar": lambda: CutPasteScar(mode="mixed", seed=seed),
        "perlin": lambda: PerlinDefect(seed=seed),
        "hand_drawn": lambda: HandDrawnDefect(seed=seed),
        "crack": lambda: CrackDefect(seed=seed),
        "stain": lambda: StainDefect(seed=seed),
        "burn": lambda: BurnDefect(seed=seed),
        "pitting": lambda: PittingDefect(seed=seed),
        "scratch": lambda: ScratchDefect(seed=seed),
        "texture_swap": lambda: TextureSwapDefect(seed=seed),
        "halo_burn": lambda: HaloBurnDefect(seed=seed),
        "fading_discolouration": lambda: FadingDiscolourationDefect(seed=seed),
        "soft_rim_stain": lambda: SoftRimStainDefect(seed=seed),
    }
    if name not in factories:
        msg = f"Unknown defect kind {name!r}. Known: {', '.join(factories)}."
        raise ValueError(msg)
    return factories[name]()


def to_uint8(image: torch.Tensor | np.ndarray, is_mask: bool = False) -> np.ndarray:
    """Convert a ``(C, H, W)``/``(H, W)`` float tensor in [0, 1] or an ``(H, W[, C])`` uint8 array to PIL layout."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 3:
            array = array.permute(1, 2, 0)
        if array.is_floating_point():
            array = (array.clamp(0, 1) * 255).round()
        array = array.to(torch.uint8).numpy()
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if is_mask:
        array = np.where(array > 0, 255, 0).astype(np.uint8)
        if array.ndim == 3:
            array = array.max(-1)
    return array


def _extract_image(item: Any) -> torch.Tensor:
    """Get the image tensor out of a dataset item (tensor, anomalib item, dict or tuple)."""
    if isinstance(item, torch.Tensor):
        return item
    if hasattr(item, "image"):
        return item.image
    if isinstance(item, dict) and "image" in item:
        return item["image"]
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    msg = f"Cannot find an image in a dataset item of type {type(item).__name__}."
    raise TypeError(msg)


class SyntheticDefectDataset(Dataset):
    """Wrap a dataset of normal images and return ``(image, mask)`` pairs with synthetic defects.

    Useful to train refinement networks (PNI) on normal training data. Item ``i`` is reproducible: it uses a
    generator seeded with ``(seed, i)``, independent of worker order.

    Args:
        dataset: Dataset of normal images; items may be tensors, anomalib ``ImageItem``, dicts with ``"image"``
            or tuples whose first element is the image.
        generator: The defect generator; :class:`MixedDefect` (PNI's four kinds) when ``None``.
        probability: Probability that an item gets a defect (otherwise the mask is empty).
        seed: Base seed.
    """

    def __init__(
        self,
        dataset: Dataset,
        generator: DefectGenerator | None = None,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            msg = f"probability must be in [0, 1], got {probability}."
            raise ValueError(msg)
        self.dataset = dataset
        self.generator = MixedDefect() if generator is None else generator
        self.probability = float(probability)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (possibly) defective image ``(C, H, W)`` and its mask ``(1, H, W)``."""
        image = torch.as_tensor(_extract_image(self.dataset[index])).float()
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        if float(torch.rand(1, generator=rng).item()) >= self.probability:
            return image, torch.zeros(1, *image.shape[-2:], dtype=image.dtype)
        return self.generator(image, generator=rng)


#: Defect size bins by the masked share of the image: ``(name, lower bound, upper bound)``.
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("tiny<0.2%", 0.0, 0.002),
    ("small0.2-1%", 0.002, 0.01),
    ("medium1-4%", 0.01, 0.04),
    ("large>=4%", 0.04, 1.0 + 1e-9),
)


def size_bin(area_fraction: float) -> str:
    """Name of the :data:`SIZE_BINS` bin of a defect covering ``area_fraction`` of the image ("" for no defect)."""
    if not area_fraction > 0:
        return ""
    return next(name for name, low, high in SIZE_BINS if low <= area_fraction < high)
