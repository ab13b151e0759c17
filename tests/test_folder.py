"""Tests of the MVTec-style folder writer, validator, embedded benchmark and anomalib datamodule compatibility."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import Folder, MVTecAD
from PIL import Image

from anomalib_pixelrefine.data import (
    DEFAULT_DEFECTS,
    CutPaste,
    InvalidDatasetError,
    build_default_benchmark,
    default_datamodule,
    elpv_available,
    validate_mvtec_folder,
    write_mvtec_folder,
)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A category written by write_mvtec_folder from 8-bit-exact normal images."""
    gen = torch.Generator().manual_seed(0)
    normals = (torch.rand(10, 3, 32, 32, generator=gen) * 255).round() / 255
    defective, masks = CutPaste(mode="patch", seed=0)(normals[6:])
    path = write_mvtec_folder(tmp_path, "toy", normals[:4], normals[4:6], {"patch": (defective, masks)})
    return path, normals, defective, masks


def test_write_layout_and_exact_masks_after_png(written) -> None:
    path, normals, _, masks = written
    assert sorted(p.name for p in (path / "train" / "good").iterdir()) == [f"{i:03d}.png" for i in range(4)]
    assert len(list((path / "test" / "good").iterdir())) == 2
    assert sorted(p.name for p in (path / "ground_truth" / "patch").iterdir()) == [
        f"{i:03d}_mask.png" for i in range(4)
    ]
    for index in range(4):
        image = _read(path / "test" / "patch" / f"{index:03d}.png").astype(int)
        mask = _read(path / "ground_truth" / "patch" / f"{index:03d}_mask.png")
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, masks[index, 0].numpy() > 0)
        original = (normals[6 + index].permute(1, 2, 0).numpy() * 255).round().astype(int)
        changed = np.abs(image - original).max(-1)
        # after 8-bit quantisation the mask still marks exactly the changed pixels, each by >= 0.1 * 255 - 1
        np.testing.assert_array_equal(changed > 0, mask > 0)
        assert changed[mask > 0].min() >= 24
    assert validate_mvtec_folder(path) == {"train/good": 4, "test/good": 2, "test/patch": 4}


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="training set is empty"):
        write_mvtec_folder(tmp_path, "a", [], images, {})
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        write_mvtec_folder(tmp_path, "a", images, images, {"d": (images, torch.ones(1, 1, 16, 16))})
    with pytest.raises(ValueError, match="sizes differ"):
        write_mvtec_folder(tmp_path, "a", images, images, {"d": (images, torch.ones(2, 1, 8, 8))})
    with pytest.raises(ValueError, match="Invalid defect name 'good'"):
        write_mvtec_folder(tmp_path, "a", images, images, {"good": (images, torch.ones(2, 1, 16, 16))})


def test_anomalib_mvtec_and_folder_datamodules_read_layout(tiny_mvtec_path: Path) -> None:
    datamodule = default_datamodule(tiny_mvtec_path, train_batch_size=4, eval_batch_size=8)
    assert isinstance(datamodule, MVTecAD)
    datamodule.setup()
    train = next(iter(datamodule.train_dataloader()))
    assert train.image.shape == (4, 3, 64, 64)
    labels, mask_sums = [], []
    for batch in datamodule.test_dataloader():
        labels += batch.gt_label.tolist()
        mask_sums += batch.gt_mask.flatten(1).sum(1).tolist()
        assert batch.gt_mask.shape[-2:] == (64, 64)
    assert sorted(labels) == [0, 0, 0, 0, 1, 1, 1, 1]
    # masks are paired with their images: defective images have non-empty masks, good ones empty
    assert all((s > 0) == bool(lbl) for s, lbl in zip(mask_sums, labels, strict=True))

    folder = Folder(
        name="tiny",
        root=tiny_mvtec_path,
        normal_dir="train/good",
        abnormal_dir="test/crack",
        normal_test_dir="test/good",
        mask_dir="ground_truth/crack",
        train_batch_size=4,
        eval_batch_size=8,
        num_workers=0,
    )
    folder.setup()
    batch = next(iter(folder.test_dataloader()))
    assert batch.gt_mask.shape[-2:] == (64, 64)


def test_default_datamodule_resizes(tiny_mvtec_root: Path) -> None:
    datamodule = default_datamodule(tiny_mvtec_root, category="gravel", image_size=32, eval_batch_size=8)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[-2:] == (32, 32)
    assert batch.gt_mask.shape[-2:] == (32, 32)


def test_build_default_benchmark_is_cached_and_deterministic(tmp_path: Path) -> None:
    kwargs = {"categories": ["brick"], "image_size": 32, "n_train": 3, "n_test_good": 2, "n_test_defect": 2}
    paths = build_default_benchmark(tmp_path / "a", **kwargs)
    path = paths["brick"]
    assert validate_mvtec_folder(path) == {
        "train/good": 3,
        "test/good": 2,
        **{f"test/{name}": 2 for name in DEFAULT_DEFECTS},
    }
    assert json.loads((path / "manifest.json").read_text())["image_size"] == 32
    image = _read(path / "test" / "crack" / "000.png")
    assert image.shape == (32, 32, 3)
    stamp = (path / "train" / "good" / "000.png").stat().st_mtime_ns
    build_default_benchmark(tmp_path / "a", **kwargs)
    assert (path / "train" / "good" / "000.png").stat().st_mtime_ns == stamp  # reused
    build_default_benchmark(tmp_path / "a", **{**kwargs, "n_train": 4})
    assert len(list((path / "train" / "good").iterdir())) == 4  # parameters changed: rebuilt
    other = build_default_benchmark(tmp_path / "b", **{**kwargs, "n_train": 4})["brick"]
    for file in sorted(path.rglob("*.png")):
        np.testing.assert_array_equal(_read(file), _read(other / file.relative_to(path)))


def test_build_default_benchmark_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown default category 'wood'"):
        build_default_benchmark(tmp_path, categories=["wood"], image_size=32, n_train=2)
    with pytest.raises(ValueError, match="Unknown defect kind 'dent'"):
        build_default_benchmark(tmp_path, categories=["brick"], defects=["dent"])
    with pytest.raises(ValueError, match="n_train"):
        build_default_benchmark(tmp_path, n_train=0)


@pytest.mark.skipif(not elpv_available(), reason="elpv-dataset not installed")
def test_elpv_category(tmp_path: Path) -> None:
    path = build_default_benchmark(
        tmp_path, categories=["elpv"], image_size=32, n_train=2, n_test_good=1, n_test_defect=1, defects=["crack"]
    )["elpv"]
    image = _read(path / "train" / "good" / "000.png")
    assert image.shape == (32, 32, 3)
    assert (image[..., 0] == image[..., 1]).all()  # grey cells written as 3 channels


# ----------------------------------------------------------------------------------------------- validation errors
@pytest.fixture
def category(written) -> Path:
    return written[0]


def test_validate_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match=str(tmp_path / "nope")):
        validate_mvtec_folder(tmp_path / "nope")


def test_validate_missing_train(category: Path) -> None:
    shutil.rmtree(category / "train")
    with pytest.raises(InvalidDatasetError, match=f"Missing training folder {category / 'train' / 'good'}"):
        validate_mvtec_folder(category)


def test_validate_empty_train(category: Path) -> None:
    for file in (category / "train" / "good").iterdir():
        file.unlink()
    with pytest.raises(InvalidDatasetError, match=f"Empty training set: no images in {category / 'train' / 'good'}"):
        validate_mvtec_folder(category)


def test_validate_missing_test(category: Path) -> None:
    shutil.rmtree(category / "test")
    with pytest.raises(InvalidDatasetError, match=f"Missing test folder {category / 'test'}"):
        validate_mvtec_folder(category)


def test_validate_non_image_file(category: Path) -> None:
    bad = category / "train" / "good" / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(InvalidDatasetError, match=f"Non-image file {bad}"):
        validate_mvtec_folder(category)


def test_validate_corrupt_image(category: Path) -> None:
    bad = category / "test" / "good" / "009.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InvalidDatasetError, match=f"Cannot read image {bad}"):
        validate_mvtec_folder(category)


def test_validate_mask_size_mismatch(category: Path) -> None:
    mask = category / "ground_truth" / "patch" / "001_mask.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(mask)
    with pytest.raises(InvalidDatasetError, match=f"Mask {mask} is 16x16 but image .*001.png is 32x32"):
        validate_mvtec_folder(category)


def test_validate_missing_mask(category: Path) -> None:
    (category / "ground_truth" / "patch" / "002_mask.png").unlink()
    with pytest.raises(InvalidDatasetError, match=f"Missing mask for {category / 'test' / 'patch' / '002.png'}"):
        validate_mvtec_folder(category)
    shutil.rmtree(category / "ground_truth")
    with pytest.raises(InvalidDatasetError, match=f"Missing mask folder {category / 'ground_truth' / 'patch'}"):
        validate_mvtec_folder(category)


def test_validate_orphan_mask(category: Path) -> None:
    orphan = category / "ground_truth" / "patch" / "007_mask.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(orphan)
    with pytest.raises(InvalidDatasetError, match=f"Mask {orphan} has no image"):
        validate_mvtec_folder(category)


def test_default_datamodule_can_hold_out_validation_images(tiny_mvtec_path: Path) -> None:
    datamodule = default_datamodule(tiny_mvtec_path, eval_batch_size=8, val_split_mode="from_test", seed=0)
    datamodule.setup()
    test_labels = [label for batch in datamodule.test_dataloader() for label in batch.gt_label.tolist()]
    val_labels = [label for batch in datamodule.val_dataloader() for label in batch.gt_label.tolist()]
    assert len(test_labels) + len(val_labels) == 8
    assert 0 < len(val_labels) < 8
    assert 1 in val_labels  # anomalib keeps both classes in the held-out part
    assert 1 in test_labels
