"""Compacting a finished run's output folder for committing (benchmarks/run_benchmark.py --compact)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomalib_pixelrefine.benchmark.compact import compact_results


def _run_folder(root: Path) -> Path:
    folder = root / "run"
    (folder / "qualitative").mkdir(parents=True)
    (folder / "results.md").write_text("# results\n")
    rows = "job_id,image_path,dice\nj,/home/me/work/datasets/pixelrefine/brick/test/crack/000.png,0.5\n"
    rows += "j,./datasets/pixelrefine/brick/test/good/000.png,\n"
    (folder / "per_image.csv").write_text(rows)
    noise = np.random.default_rng(0).integers(0, 255, (40, 1000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "qualitative" / "wide.png")
    Image.fromarray(noise[:, :300]).save(folder / "qualitative" / "small.png")
    (folder / "rows.partial.jsonl").write_text("{}\n")
    return folder


def test_compact_makes_paths_relative_gzips_rows_halves_wide_pngs_and_drops_resume_files(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    compact_results(folder)
    rows = pd.read_csv(folder / "per_image.csv.gz")
    assert rows["image_path"].tolist() == [
        "datasets/pixelrefine/brick/test/crack/000.png",
        "datasets/pixelrefine/brick/test/good/000.png",
    ]
    assert rows["dice"].iloc[0] == 0.5
    assert not (folder / "per_image.csv").exists()
    assert not (folder / "rows.partial.jsonl").exists()
    assert Image.open(folder / "qualitative" / "wide.png").size == (500, 20)
    assert Image.open(folder / "qualitative" / "small.png").size == (300, 40)  # already small: untouched


def test_compact_refuses_a_folder_without_finished_results(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    (folder / "results.md").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds no results\.md"):
        compact_results(folder)
    assert (folder / "rows.partial.jsonl").exists()  # nothing touched
