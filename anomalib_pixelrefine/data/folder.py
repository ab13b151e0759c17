"""MVTec-style folders: writing, validating, and the embedded default benchmark.

Layout (readable directly by anomalib's ``MVTecAD`` and ``Folder`` datamodules)::

    <root>/<category>/
        train/good/000.png ...
        test/good/000.png ...
        test/<defect>/000.png ...
        ground_truth/<defect>/000_mask.png ...   (0 = normal, 255 = defect)

The embedded benchmark (:func:`build_default_benchmark`) is built offline from scikit-image's bundled textures and,
when the optional ``elpv-dataset`` package is installed, from real defect-free solar cells; defects come from
:mod:`anomalib_pixelrefine.data.generators`, so the masks are exact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from anomalib_pixelrefine.checks import DEFAULT_MAX_FALSE_ALARM_RATE
from anomalib_pixelrefine.errors import PixelRefineError

from .generators import defect_generator
from .generators import to_uint8 as _to_uint8

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CATEGORIES",
    "DEFAULT_DEFECTS",
    "IMAGE_LEVEL_CATEGORIES",
    "FolderNotOwnedError",
    "InvalidDatasetError",
    "build_default_benchmark",
    "default_datamodule",
    "defect_generator",
    "validate_mvtec_folder",
    "write_mvtec_folder",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# scikit-image textures shipped inside the wheel (no pooch download needed).
TEXTURES = ("brick", "grass", "gravel")
DEFAULT_CATEGORIES = (*TEXTURES, "elpv")
#: Every defect kind, on every background: the project's first kinds, then realistic ones of every size (~0.02-10 %).
DEFAULT_DEFECTS = (
    "cut_paste_color",
    "cut_paste_patch",
    "scar",
    "perlin",
    "hand_drawn",
    "crack",
    "stain",
    "burn",
    "pitting",
    "scratch",
    "texture_swap",
    "halo_burn",
    "fading_discolouration",
    "soft_rim_stain",
)
#: Categories with real defects and image labels only (no masks).
IMAGE_LEVEL_CATEGORIES = ("elpv_real",)
_MANIFEST = "manifest.json"
_MANIFEST_VERSION = 2

ImageLike = torch.Tensor | np.ndarray


class InvalidDatasetError(PixelRefineError, ValueError):
    """An MVTec-style folder is missing parts or holds invalid files; the message names the path."""


# --------------------------------------------------------------------------------------------------------- writing
def _png_bytes(image: ImageLike, is_mask: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(image, is_mask)).save(buffer, format="PNG")
    return buffer.getvalue()


# Ownership marker: every file this package wrote into a category folder, with the SHA-256 of its content. Only a
# folder holding it is ever rebuilt, and only the files listed in it whose content is unchanged are ever deleted.
_MARKER = ".pixelrefine_files.json"
_MARKER_TAG = "anomalib-pixelrefine"


class FolderNotOwnedError(PixelRefineError, FileExistsError):
    """The target folder exists and holds files this package did not write; nothing was deleted."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _marker_files(path: Path) -> Any:
    """The ``files`` entry of the folder's marker (``None`` without a marker of this package)."""
    try:
        data = json.loads((path / _MARKER).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data.get("files") if isinstance(data, dict) and data.get("written_by") == _MARKER_TAG else None


def _owned_files(path: Path) -> dict[str, str] | None:
    """``{relative POSIX path: SHA-256}`` of the files this package wrote into ``path``; ``None`` if it is not ours.

    Only the marker with content hashes counts: a ``manifest.json`` alone (the format of versions before the marker)
    and a marker of names only (earlier versions) grant nothing, since a user may have put or changed files there.
    """
    files = _marker_files(path)
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    return {str(name): digest for name, digest in files.items()}


def _write_owned_files(path: Path, files: dict[str, bytes]) -> None:
    """Record ``files`` (relative name -> content) in the marker of ``path``, then write them.

    The marker is written first, so the files of an interrupted write are known (a cut file fails its hash and is
    refused, never silently deleted).
    """
    owned = _owned_files(path) or {}
    owned.update({name: _sha256(data) for name, data in files.items()})
    path.mkdir(parents=True, exist_ok=True)
    (path / _MARKER).write_text(json.dumps({"written_by": _MARKER_TAG, "files": owned}, indent=1))
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)


def _clear_owned_folder(path: Path) -> None:
    """Delete the files this package wrote into ``path`` (refusing if any other file is there), then empty folders.

    Raises:
        FolderNotOwnedError: If ``path`` is not ours or holds a file we did not write or whose content changed since
            (nothing is deleted then).
    """
    present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink())
    if not present and not any(path.iterdir()):
        return  # an empty folder: nothing to lose
    owned = _owned_files(path)
    if owned is None and isinstance(_marker_files(path), list):
        msg = (
            f"Refusing to rebuild {path}: it was written by an earlier anomalib-pixelrefine version, whose {_MARKER} "
            "records no content hashes (files may have changed since); remove the folder yourself to rebuild it."
        )
        raise FolderNotOwnedError(msg)
    if owned is None:
        msg = (
            f"Refusing to write into {path}: the folder exists and was not created by anomalib-pixelrefine "
            f"(no {_MARKER} with content hashes); choose another root or remove it yourself."
        )
        raise FolderNotOwnedError(msg)
    for name in present:
        if name == _MARKER:
            continue
        file = path / name
        if name not in owned or file.is_symlink():
            msg = (
                f"Refusing to rebuild {path}: it holds file(s) anomalib-pixelrefine did not write, e.g. {file}; "
                "move them away or choose another root."
            )
            raise FolderNotOwnedError(msg)
        if _sha256(file.read_bytes()) != owned[name]:
            msg = (
                f"Refusing to rebuild {path}: {file} was changed after anomalib-pixelrefine wrote it; "
                "move it away or choose another root."
            )
            raise FolderNotOwnedError(msg)
    for name in present:
        (path / name).unlink()
    # Remove the then empty sub-folders, deepest first (rmdir never removes a non-empty folder).
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def write_mvtec_folder(
    root: str | Path,
    category: str,
    train_images: Sequence[ImageLike],
    test_good_images: Sequence[ImageLike],
    defect_images: dict[str, tuple[Sequence[ImageLike], Sequence[ImageLike] | None]],
    overwrite: bool = True,
) -> Path:
    """Write one category in MVTec AD layout as PNG files.

    Nothing this function did not write is ever deleted or overwritten: the files it writes are listed with the
    SHA-256 of their content in the folder's marker file ``.pixelrefine_files.json``. An existing category folder is
    rebuilt only if it holds that marker and no other file, and every listed file is unchanged; then those files are
    deleted. Any other non-empty folder is refused (a ``manifest.json`` alone does not make a folder ours).

    Args:
        root: Dataset root.
        category: Category folder name.
        train_images: Normal training images: float tensors ``(C, H, W)`` in [0, 1] (or a ``(N, C, H, W)`` tensor),
            or uint8 arrays ``(H, W[, C])``.
        test_good_images: Normal test images.
        defect_images: ``{defect_name: (images, masks)}``; masks ``(1, H, W)``/``(H, W)``, non-zero = defect;
            ``masks=None`` for image-level defects (no ``ground_truth`` folder is written).
        overwrite: Replace an existing category folder written by this package (``False``: refuse it too).

    Returns:
        The category folder ``root / category``.

    Raises:
        ValueError: If a split is empty, a defect is named ``good``, or images and masks do not match.
        FolderNotOwnedError: (a ``FileExistsError``) If ``root / category`` exists, is not empty and was not written
            by this package, holds files it did not write, or ``overwrite=False``. The message names the folder.
    """
    path = Path(root) / category
    if len(train_images) == 0:
        msg = f"Cannot write {path}: the training set is empty."
        raise ValueError(msg)
    for name, (images, masks) in defect_images.items():
        if name == "good" or not name or "/" in name:
            msg = f"Invalid defect name {name!r} for {path}."
            raise ValueError(msg)
        if masks is None:
            continue
        if len(images) != len(masks):
            msg = f"Defect {name!r} of {path}: {len(images)} images but {len(masks)} masks."
            raise ValueError(msg)
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if _to_uint8(image).shape[:2] != _to_uint8(mask, is_mask=True).shape[:2]:
                msg = f"Defect {name!r} of {path}, image {index}: image and mask sizes differ."
                raise ValueError(msg)
    if path.exists() and not path.is_dir():
        msg = f"Refusing to write {path}: it exists and is not a folder."
        raise FolderNotOwnedError(msg)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            msg = f"Refusing to write into {path}: the folder exists and is not empty (overwrite=False)."
            raise FolderNotOwnedError(msg)
        _clear_owned_folder(path)
    splits = {"train/good": (train_images, ""), "test/good": (test_good_images, "")}
    for name, (images, masks) in defect_images.items():
        splits[f"test/{name}"] = (images, "")
        if masks is not None:
            splits[f"ground_truth/{name}"] = (masks, "_mask")
    files = {
        f"{split}/{index:03d}{suffix}.png": _png_bytes(image, is_mask=bool(suffix))
        for split, (items, suffix) in splits.items()
        for index, image in enumerate(items)
    }
    _write_owned_files(path, files)
    return path


# ------------------------------------------------------------------------------------------------------ validation
def _check_path(path: Path) -> None:
    """Refuse a path anomalib's data loaders refuse (``validate_path``: printable ASCII only, <= 512 characters).

    anomalib checks every image's absolute path when it loads a sample, i.e. only after the model was built and,
    for the test images, after the whole fit.
    """
    from anomalib.data.utils.path import contains_non_printable_characters, is_path_too_long

    absolute = path.resolve()
    if contains_non_printable_characters(absolute):
        bad = sorted({char for char in str(absolute) if not " " <= char <= "~"})
        msg = (
            f"Path {absolute} contains the character(s) {''.join(bad)!r}: anomalib's data loaders accept printable "
            "ASCII paths only; rename the folder or file, or move the data set."
        )
        raise InvalidDatasetError(msg)
    if is_path_too_long(absolute):
        msg = f"Path {absolute} is longer than the 512 characters anomalib's data loaders accept."
        raise InvalidDatasetError(msg)


def _image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` (hidden ones skipped); raises on sub-folders, other files, paths anomalib refuses."""
    files = []
    for item in sorted(folder.iterdir()):
        if item.name.startswith("."):
            continue
        _check_path(item)
        if item.is_dir():
            msg = f"Unexpected sub-folder {item} (MVTec layout has images directly in {folder})."
            raise InvalidDatasetError(msg)
        if item.suffix.lower() not in IMAGE_EXTENSIONS:
            msg = f"Non-image file {item} (expected one of {', '.join(IMAGE_EXTENSIONS)})."
            raise InvalidDatasetError(msg)
        files.append(item)
    return files


# Files already decoded in this process, keyed by (path, size, mtime): a rebuilt or edited file is decoded again.
_DECODED: dict[tuple[str, int, int], tuple[tuple[int, int], str]] = {}
# PIL modes of more than 8 bits per channel: anomalib's ``read_image`` (``convert("RGB")``) clips them to 255, so a
# 16-bit image would be scored as a nearly white one. Masks are read as ``> 0`` and are fine in any mode.
_HIGH_BIT_MODES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I;16N": "16-bit", "I": "32-bit integer"}
_HIGH_BIT_MODES["F"] = "32-bit float"


def _image_size(path: Path, is_mask: bool = False) -> tuple[int, int]:
    """``(width, height)`` of a fully decoded image; raises naming the file if it cannot be decoded (e.g. truncated).

    Reading only the header would accept a truncated PNG that fails later, inside a data loader, without its name.
    Images (not masks) of more than 8 bits per channel are refused: anomalib would clip them to 255.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DECODED:
        try:
            with Image.open(path) as image:
                image.load()  # decodes every pixel: truncated or corrupt data raise here
                _DECODED[key] = (image.size, image.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
            msg = f"Cannot read image {path}: {error}"
            raise InvalidDatasetError(msg) from error
    size, mode = _DECODED[key]
    if not is_mask and mode in _HIGH_BIT_MODES:
        msg = (
            f"Image {path} has {_HIGH_BIT_MODES[mode]} pixels (PIL mode {mode}); anomalib reads 8-bit images and "
            "would clip it to white: convert the images to 8 bits per channel."
        )
        raise InvalidDatasetError(msg)
    return size


def validate_mvtec_folder(path: str | Path, require_masks: bool = True) -> dict[str, int]:
    """Check that ``path`` is a usable MVTec-style category folder.

    Checks: the folder, ``train/good`` and ``test`` exist; the training set is not empty; every split folder holds
    only images that decode completely (a truncated file is named here, not later inside a data loader; files already
    decoded unchanged in this process are not decoded again); every ``test/<defect>`` has a ``ground_truth/<defect>``
    folder with exactly one mask per image (``<name>_mask.png`` or ``<name>.png``) of the same size; no mask lacks
    its image. Images may be PNG, JPEG, BMP, TIFF or WebP (any case; :func:`default_datamodule` loads them all, where
    anomalib's ``MVTecAD`` reads PNG only); images of more than 8 bits per channel (16-bit PNG/TIFF) are refused.

    Args:
        path: The category folder (e.g. ``datasets/pixelrefine/brick``).
        require_masks: Every defect folder needs its masks; ``False`` accepts image-level defect folders without a
            ``ground_truth/<defect>`` folder (real defects with image labels only, e.g. ``elpv_real``).

    Returns:
        Number of images per split: ``{"train/good": n, "test/good": n, "test/<defect>": n, ...}``.

    Raises:
        InvalidDatasetError: (a ``ValueError``) naming the offending path and problem.
    """
    root = Path(path)
    if not root.is_dir():
        msg = f"Dataset folder {root} does not exist or is not a folder."
        raise InvalidDatasetError(msg)
    _check_path(root)
    train = root / "train" / "good"
    if not train.is_dir():
        msg = f"Missing training folder {train} (MVTec layout: <category>/train/good/*.png)."
        raise InvalidDatasetError(msg)
    counts = {"train/good": len(_image_files(train))}
    if counts["train/good"] == 0:
        msg = f"Empty training set: no images in {train}."
        raise InvalidDatasetError(msg)
    for image in _image_files(train):
        _image_size(image)
    test = root / "test"
    if not test.is_dir():
        msg = f"Missing test folder {test} (MVTec layout: <category>/test/good and <category>/test/<defect>)."
        raise InvalidDatasetError(msg)
    test_folders = sorted(item for item in test.iterdir() if item.is_dir() and not item.name.startswith("."))
    if not test_folders:
        msg = f"Test folder {test} has no sub-folders (expected test/good and test/<defect>)."
        raise InvalidDatasetError(msg)
    ground_truth = root / "ground_truth"
    for folder in test_folders:
        images = _image_files(folder)
        counts[f"test/{folder.name}"] = len(images)
        if not images:
            msg = f"Empty test folder {folder}."
            raise InvalidDatasetError(msg)
        if folder.name == "good":
            for image in images:
                _image_size(image)
            continue
        mask_folder = ground_truth / folder.name
        if not mask_folder.is_dir() and not require_masks:
            for image in images:
                _image_size(image)
            continue
        if not mask_folder.is_dir():
            msg = f"Missing mask folder {mask_folder} for the defective images in {folder}."
            raise InvalidDatasetError(msg)
        masks = {mask.stem: mask for mask in _image_files(mask_folder)}
        used = set()
        for image in images:
            mask = masks.get(f"{image.stem}_mask", masks.get(image.stem))
            if mask is None:
                msg = f"Missing mask for {image}: expected {mask_folder / (image.stem + '_mask.png')}."
                raise InvalidDatasetError(msg)
            used.add(mask.stem)
            image_size, mask_size = _image_size(image), _image_size(mask, is_mask=True)
            if image_size != mask_size:
                msg = (
                    f"Mask {mask} is {mask_size[0]}x{mask_size[1]} but image {image} is "
                    f"{image_size[0]}x{image_size[1]}."
                )
                raise InvalidDatasetError(msg)
        orphans = sorted(set(masks) - used)
        if orphans:
            msg = f"Mask {masks[orphans[0]]} has no image in {folder}."
            raise InvalidDatasetError(msg)
    if ground_truth.is_dir():
        for folder in sorted(ground_truth.iterdir()):
            if folder.is_dir() and not (test / folder.name).is_dir():
                msg = f"Mask folder {folder} has no matching test folder {test / folder.name}."
                raise InvalidDatasetError(msg)
    return counts


# ----------------------------------------------------------------------------------------------- default benchmark
def elpv_available() -> bool:
    """Whether the optional ``elpv-dataset`` package (real solar-cell images) is installed."""
    return importlib.util.find_spec("elpv_dataset") is not None


def _load_elpv(count: int, cell_type: str, generator: torch.Generator, probability: float = 0.0) -> list[np.ndarray]:
    """Load ``count`` random ELPV cells of ``cell_type`` with defect ``probability`` as 300x300 uint8 arrays.

    Probability 0 are the defect-free cells, 1.0 the cells the experts marked defective for sure.

    ``elpv_dataset.load_dataset`` reads all 2624 images; we read its ``labels.csv`` the same way and open only the
    images we use.
    """
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        msg = "The ELPV category needs the optional 'elpv-dataset' package: pip install anomalib-pixelrefine[elpv]."
        raise ValueError(msg)
    data_dir = Path(spec.origin).parent / "data"
    with (data_dir / "labels.csv").open() as handle:
        rows = [row.split() for row in handle if row.strip()]
    normal = [row[0] for row in rows if float(row[1]) == probability and row[2] == cell_type]
    if len(normal) < count:
        msg = f"ELPV has only {len(normal)} {cell_type!r} cells of defect probability {probability}, {count} requested."
        raise ValueError(msg)
    chosen = torch.randperm(len(normal), generator=generator)[:count].tolist()
    images = []
    for index in chosen:
        with Image.open(data_dir / normal[index]) as image:
            images.append(np.asarray(image.convert("L")))
    return images


def _texture_tiles(name: str, count: int, crop: int, generator: torch.Generator) -> list[np.ndarray]:
    """``count`` random ``crop``-pixel tiles of a bundled scikit-image texture, randomly flipped/rotated."""
    import skimage.data

    texture = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)()))
    height, width = texture.shape[:2]
    crop = min(crop, height, width)
    tops = torch.randint(0, height - crop + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop + 1, (count,), generator=generator).tolist()
    turns = torch.randint(0, 4, (count,), generator=generator).tolist()
    flips = torch.randint(0, 2, (count,), generator=generator).tolist()
    tiles = []
    for top, left, turn, flip in zip(tops, lefts, turns, flips, strict=True):
        tile = torch.rot90(texture[top : top + crop, left : left + crop], turn, dims=(0, 1))
        tiles.append((tile.flip(1) if flip else tile).numpy())
    return tiles


def _to_tensor(images: list[np.ndarray], image_size: int) -> torch.Tensor:
    """Stack uint8 grey/RGB arrays into an RGB float batch of ``image_size``, quantised to 8 bits."""
    batch = torch.stack([torch.from_numpy(np.array(image, copy=True)) for image in images]).float() / 255
    batch = batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    if batch.shape[-1] != image_size or batch.shape[-2] != image_size:
        batch = F.interpolate(batch, size=(image_size, image_size), mode="bilinear", antialias=True)
    batch = (batch.clamp(0, 1) * 255).round() / 255  # what the PNG stores: masks stay exact after writing
    return batch.expand(-1, 3, -1, -1).contiguous() if batch.shape[1] == 1 else batch[:, :3]


def _build_category(
    category: str,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    defects: Sequence[str],
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    digest = int(hashlib.sha256(category.encode()).hexdigest()[:8], 16)
    generator = torch.Generator().manual_seed(seed * 7919 + digest)
    total = n_train + n_test_good + n_test_defect * len(defects)
    if category == "elpv_real":
        # Real defects: cells the ELPV experts marked defective for sure (probability 1.0); image labels only.
        normal = _to_tensor(_load_elpv(n_train + n_test_good, "mono", generator), image_size)
        real = _to_tensor(_load_elpv(n_test_defect * len(defects), "mono", generator, probability=1.0), image_size)
        return normal[:n_train], normal[n_train:], {"defect": (real, None)}
    if category == "elpv":
        raw = _load_elpv(total, "mono", generator)
    elif category in TEXTURES:
        # A quarter of the 512 px texture per tile: enough structure at 64-256 px.
        raw = _texture_tiles(category, total, 128, generator)
    else:
        known = ", ".join((*DEFAULT_CATEGORIES, *IMAGE_LEVEL_CATEGORIES))
        msg = f"Unknown default category {category!r}. Known: {known}."
        raise ValueError(msg)
    images = _to_tensor(raw, image_size)
    train, test_good = images[:n_train], images[n_train : n_train + n_test_good]
    defect_sets = {}
    start = n_train + n_test_good
    for index, name in enumerate(defects):
        normal = images[start + index * n_test_defect : start + (index + 1) * n_test_defect]
        defective, masks = defect_generator(name, seed=seed * 1009 + digest + index)(normal)
        defect_sets[name] = (defective, masks)
    return train, test_good, defect_sets


def build_default_benchmark(
    root: str | Path = "./datasets/pixelrefine",
    categories: Sequence[str] | None = None,
    image_size: int = 128,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 5,
    defects: Sequence[str] = DEFAULT_DEFECTS,
    seed: int = 0,
    include_elpv: bool | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Build the embedded MVTec-style benchmark offline (cached: unchanged categories are not rebuilt).

    Categories: scikit-image's bundled textures ``brick``, ``grass``, ``gravel`` (grey, written as RGB) and ``elpv``
    (defect-free monocrystalline solar cells of the ELPV data set, when ``elpv-dataset`` is installed). Each gets
    ``n_train`` normal training images, ``n_test_good`` normal test images and ``n_test_defect`` images per defect
    kind in ``defects`` (:data:`DEFAULT_DEFECTS`: cut-paste colour/patch, scar, Perlin, hand-drawn, crack, stain,
    burn, pitting, scratch, texture swap, and the faint-extent kinds halo burn, fading discolouration and soft-rim
    stain, whose faint parts are annotated; ~0.02-10 % of the image) with exact masks. ``elpv_real`` (asked for by
    name) holds *real* defective monocrystalline cells (defect probability 1.0, ``n_test_defect * len(defects)``
    of them in ``test/defect``) with image labels only.

    Args:
        root: Output root; each category is written to ``root / category``.
        categories: Categories to build; all of :data:`DEFAULT_CATEGORIES` (``elpv`` subject to ``include_elpv``)
            when ``None``.
        image_size: Side of the square images.
        n_train: Normal training images per category.
        n_test_good: Normal test images per category.
        n_test_defect: Defective test images per defect kind.
        defects: Defect kinds (test folder names).
        seed: Seed of the whole build.
        include_elpv: Add ``elpv`` to the default categories; when ``None``, only if ``elpv-dataset`` is installed.
        force: Rebuild even if the manifest matches.

    Returns:
        ``{category: category_path}``; use e.g. ``MVTecAD(root=path.parent, category=path.name)`` or
        :func:`default_datamodule`.

    Raises:
        ValueError: For an unknown category or defect kind, sizes < 1, or ``elpv`` without ``elpv-dataset``.
    """
    if image_size < 8 or n_train < 1 or n_test_good < 0 or n_test_defect < 1:
        msg = (
            f"Need image_size >= 8, n_train >= 1, n_test_good >= 0 and n_test_defect >= 1; got image_size="
            f"{image_size}, n_train={n_train}, n_test_good={n_test_good}, n_test_defect={n_test_defect}."
        )
        raise ValueError(msg)
    if categories is None:
        use_elpv = elpv_available() if include_elpv is None else include_elpv
        categories = [name for name in DEFAULT_CATEGORIES if name != "elpv" or use_elpv]
    for name in defects:
        defect_generator(name, 0)  # validates the names before any work
    for category in categories:
        _check_path(Path(root) / category)  # a path anomalib cannot load is refused before anything is written
    paths = {}
    for category in categories:
        params: dict[str, Any] = {
            "version": _MANIFEST_VERSION,
            "category": category,
            "image_size": image_size,
            "n_train": n_train,
            "n_test_good": n_test_good,
            "n_test_defect": n_test_defect,
            "defects": list(defects),
            "seed": seed,
        }
        path = Path(root) / category
        manifest = path / _MANIFEST
        if not force and manifest.is_file():
            try:
                # Reading only: a folder of an earlier version (marker of names only) is reused as it is.
                cached = json.loads(manifest.read_text()) == params and _marker_files(path) is not None
                if cached:
                    validate_mvtec_folder(path, require_masks=category not in IMAGE_LEVEL_CATEGORIES)
            except (json.JSONDecodeError, InvalidDatasetError):
                cached = False
            if cached:
                logger.info("Reusing %s (manifest matches).", path)
                paths[category] = path
                continue
        logger.info("Building %s.", path)
        train, test_good, defect_sets = _build_category(
            category, image_size, n_train, n_test_good, n_test_defect, defects, seed
        )
        write_mvtec_folder(root, category, train, test_good, defect_sets)
        validate_mvtec_folder(path, require_masks=category not in IMAGE_LEVEL_CATEGORIES)
        _write_owned_files(path, {_MANIFEST: json.dumps(params, indent=2).encode()})
        paths[category] = path
    return paths


def default_datamodule(
    path: str | Path,
    category: str | None = None,
    image_size: int | None = None,
    train_batch_size: int = 16,
    eval_batch_size: int = 16,
    num_workers: int = 0,
    seed: int | None = None,
    val_split_mode: str = "synthetic",
    val_split_ratio: float = 0.25,
    max_false_alarm_rate: float | None = DEFAULT_MAX_FALSE_ALARM_RATE,
) -> Any:
    """Anomalib datamodule for an MVTec-style category folder (validated first), with an honest validation split.

    The default validation never sees a test image: ``val_split_ratio`` of the normal training images are held back
    and each gets a copy with a synthetic defect of this package's kinds (:class:`SyntheticValMVTecAD`), so image and
    pixel thresholds and the refiners' initial masks are calibrated without annotated defects.

    Args:
        path: The category folder, or the dataset root when ``category`` is given.
        category: Category name under ``path``.
        image_size: Resize images and masks to this square size (not needed for folders written at the model size).
        train_batch_size: Training batch size.
        eval_batch_size: Evaluation batch size.
        num_workers: Data-loader workers.
        seed: Seed of the splits and the synthetic defects.
        val_split_mode: ``synthetic`` (default; see above), ``same_as_test`` (thresholds calibrated on the test masks
            themselves: an *oracle* upper bound, never a deployable number), ``from_test`` (a held-out share of the
            test images), ``from_train`` (normal images only) or ``none``.
        val_split_ratio: Share of the training (``synthetic``/``from_train``) or test (``from_test``) images moved to
            validation.
        max_false_alarm_rate: The post-processor's false-alarm budget: ``synthetic`` holds back enough normal images
            for it (:class:`~.synthetic_val.SyntheticValidationMixin`).

    Returns:
        A :class:`SyntheticValMVTecAD` datamodule, or a :class:`SyntheticValFolder` for image-level categories
        (defect folders without masks, e.g. ``elpv_real``).
    """
    from .synthetic_val import SyntheticValFolder, SyntheticValMVTecAD

    folder = Path(path) / category if category is not None else Path(path)
    test = folder / "test"
    defect_dirs = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good") if test.is_dir() else []
    # Image-level: defect folders without any ground-truth folder (real defects with image labels only).
    image_level = bool(defect_dirs) and not (folder / "ground_truth").is_dir()
    validate_mvtec_folder(folder, require_masks=not image_level)
    augmentations = None
    if image_size is not None:
        from torchvision.transforms import v2

        augmentations = v2.Resize((image_size, image_size), antialias=True)
    common = {
        "train_batch_size": train_batch_size,
        "eval_batch_size": eval_batch_size,
        "num_workers": num_workers,
        "augmentations": augmentations,
        "seed": seed,
        "val_split_mode": val_split_mode,
        "val_split_ratio": val_split_ratio,
        "max_false_alarm_rate": max_false_alarm_rate,
    }
    if image_level:
        return SyntheticValFolder(
            name=folder.name,
            root=folder,
            normal_dir="train/good",
            abnormal_dir=[f"test/{name}" for name in defect_dirs],
            normal_test_dir="test/good",
            extensions=IMAGE_EXTENSIONS,
            **common,
        )
    return SyntheticValMVTecAD(root=folder.parent, category=folder.name, **common)
