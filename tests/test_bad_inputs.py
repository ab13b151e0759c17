"""Bad input never loses data, never passes silently as NaN, and fails with a one-line error naming the problem.

One test (or a few) per item of issue 18; tiny data (16-64 px, a handful of images, random backbone weights).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_pixelrefine.data import (
    FolderNotOwnedError,
    InvalidDatasetError,
    build_default_benchmark,
    validate_mvtec_folder,
    write_mvtec_folder,
)

TINY = {"categories": ["brick"], "image_size": 32, "n_train": 3, "n_test_good": 1, "n_test_defect": 1}


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


# -------------------------------------------------------------------------------------------- 1. no data loss
def test_existing_user_folder_is_never_deleted(tmp_path: Path) -> None:
    user_file = tmp_path / "brick" / "notes.txt"
    user_file.parent.mkdir()
    user_file.write_text("mine")
    with pytest.raises(FolderNotOwnedError, match="not created by anomalib-pixelrefine") as info:
        build_default_benchmark(tmp_path, **TINY)
    assert str(tmp_path / "brick") in _one_line(info.value)
    assert user_file.read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "brick").iterdir()) == ["notes.txt"]


def test_rebuild_of_our_folder_keeps_foreign_files_and_deletes_only_ours(tmp_path: Path) -> None:
    path = build_default_benchmark(tmp_path, **TINY)["brick"]
    user_file = path / "train" / "good" / "my_extra.png"
    user_file.write_bytes((path / "train" / "good" / "000.png").read_bytes())
    # Parameters changed: the folder would be rebuilt, but it now holds a file we did not write.
    with pytest.raises(FolderNotOwnedError, match="did not write") as info:
        build_default_benchmark(tmp_path, **{**TINY, "n_train": 2})
    assert str(user_file) in _one_line(info.value)
    assert user_file.is_file()
    assert (path / "train" / "good" / "002.png").is_file()  # nothing deleted
    user_file.unlink()
    build_default_benchmark(tmp_path, **{**TINY, "n_train": 2})  # only ours left: rebuilt, stale files removed
    assert sorted(p.name for p in (path / "train" / "good").iterdir()) == ["000.png", "001.png"]


def test_write_mvtec_folder_refuses_without_overwrite(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 16, 16)
    path = write_mvtec_folder(tmp_path, "a", images, images, {})
    with pytest.raises(FolderNotOwnedError, match="overwrite=False"):
        write_mvtec_folder(tmp_path, "a", images, images, {}, overwrite=False)
    assert validate_mvtec_folder(path) == {"train/good": 2, "test/good": 2}


# -------------------------------------------------------------------------------------------- 5. truncated image
def test_truncated_png_is_named_by_the_validator(tmp_path: Path) -> None:
    path = build_default_benchmark(tmp_path, **TINY)["brick"]
    bad = path / "train" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header (and size) is intact, the pixel data is cut
    with pytest.raises(InvalidDatasetError, match="truncated") as info:
        validate_mvtec_folder(path)
    assert f"Cannot read image {bad}" in _one_line(info.value)


# ------------------------------------------------------------------------------------- 10. undefined metrics
def test_good_only_test_set_reports_nan_metrics_with_a_reason(tmp_path: Path) -> None:
    from anomalib.engine import Engine

    from anomalib_pixelrefine.data import default_datamodule
    from anomalib_pixelrefine.demo import build_demo_model, format_table
    from anomalib_pixelrefine.metrics import UndefinedMetricWarning

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    path = write_mvtec_folder(tmp_path / "data", "plain", images[:4], images[4:], {})  # test/good only
    datamodule = default_datamodule(path, train_batch_size=4, eval_batch_size=2)
    model = build_demo_model("Padim", image_size=32)
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    with pytest.warns(UndefinedMetricWarning) as records:
        results = engine.test(model=model, datamodule=datamodule)[0]
    undefined = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_SPRO", "pixel_Dice", "pixel_IoU", "pixel_BestDice")
    for name in (*undefined, "pixel_BestIoU"):
        assert results[name] != results[name], f"{name} = {results[name]} (expected NaN)"
    messages = [str(record.message) for record in records if record.category is UndefinedMetricWarning]
    assert any("image_AUROC is undefined" in m and "no anomalous sample" in m for m in messages)
    assert any("pixel_Dice is undefined" in m and "no defect pixel" in m for m in messages)
    assert all("\n" not in m for m in messages)
    assert "| nan |" in format_table({"plain": {"pixel_Dice": results["pixel_Dice"]}})
