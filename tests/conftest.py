"""Shared pytest fixtures.

``tiny_mvtec_root``: a tiny MVTec-style dataset built once per session with the project's own builder (category
``TINY_CATEGORY``: 64 px gravel tiles, 8 train/good, 4 test/good, 2 defective images for each of ``cut_paste_color``
and ``crack`` with exact masks). Use ``MVTecAD(root=tiny_mvtec_root, category=TINY_CATEGORY, num_workers=0)`` or
``default_datamodule(tiny_mvtec_path)``.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from anomalib_pixelrefine.data import build_default_benchmark

TINY_CATEGORY = "gravel"
TINY_IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a test module: on the shared 2-core box, two contending OpenMP threads are far slower.

    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of the tiny MVTec-style dataset (one category, ``TINY_CATEGORY``)."""
    root = tmp_path_factory.mktemp("tiny_mvtec")
    build_default_benchmark(
        root,
        categories=[TINY_CATEGORY],
        image_size=TINY_IMAGE_SIZE,
        n_train=8,
        n_test_good=4,
        n_test_defect=2,
        defects=("cut_paste_color", "crack"),
        seed=0,
    )
    return root


@pytest.fixture(scope="session")
def tiny_mvtec_path(tiny_mvtec_root: Path) -> Path:
    """Category folder of the tiny dataset (``tiny_mvtec_root / TINY_CATEGORY``)."""
    return tiny_mvtec_root / TINY_CATEGORY


def tiny_embedded_data(root: Path, n_train: int, n_test_good: int, n_test_defect: int) -> dict:
    """Benchmark ``data`` entry of the embedded data: 32 px gravel, cut-paste colour and scratch defects."""
    init_args = {"category": "gravel", "root": str(root), "image_size": 32, "n_train": n_train}
    init_args |= {"n_test_good": n_test_good, "n_test_defect": n_test_defect}
    return {"class_path": "default", "init_args": {**init_args, "defects": ["cut_paste_color", "scratch"]}}
