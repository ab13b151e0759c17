"""anomalib's segmentation-head peers (Supersimplenet, Glass, Draem) and MEBin as benchmark jobs, offline, tiny."""

from pathlib import Path

import pytest
from anomalib.post_processing import PostProcessor
from conftest import tiny_embedded_data

from anomalib_pixelrefine.benchmark.job import PixelRefineBenchmarkJob, resolve_model_class
from anomalib_pixelrefine.benchmark.profiles import (
    _SEGMENTATION_PEERS,
    PEER_MAX_EPOCHS,
    PEERS_SMOKE_PROFILE,
    _segmentation_peers,
)
from anomalib_pixelrefine.weights import ensure_offline_weights

pytestmark = pytest.mark.usefixtures("single_thread")


def test_peer_specs_construct_offline_with_anomalibs_own_post_processor(tmp_path: Path, monkeypatch) -> None:
    if not ensure_offline_weights("tf_efficientnet_lite0"):
        pytest.skip("offline lite0 weights not installed")
    monkeypatch.chdir(tmp_path)  # Draem's empty texture folder is relative
    assert [spec["class_path"] for spec in _SEGMENTATION_PEERS] == ["Supersimplenet", "Glass", "Draem"]
    assert {spec["class_path"]: spec["engine"]["max_epochs"] for spec in _SEGMENTATION_PEERS} == PEER_MAX_EPOCHS
    (tmp_path / "datasets" / "pixelrefine_no_dtd").mkdir(parents=True)
    for spec in _segmentation_peers(32):
        model = resolve_model_class(spec["class_path"])(**spec["init_args"])
        assert type(model.post_processor) is PostProcessor  # "default" = anomalib's own, as shipped
    grid = PEERS_SMOKE_PROFILE["benchmark"]
    assert grid["post_processor"]["grid"] == ["default", "mebin"]


@pytest.mark.parametrize("name", ["Supersimplenet", "Glass", "Draem"])
def test_peer_fits_and_tests_as_a_benchmark_job(name: str, tmp_path: Path, monkeypatch) -> None:
    """One epoch on 32 px gravel (8 training images): statuses ok, deployed metrics filled (~5-15 s each)."""
    if not ensure_offline_weights("tf_efficientnet_lite0"):
        pytest.skip("offline lite0 weights not installed")
    monkeypatch.chdir(tmp_path)
    specs = _segmentation_peers(32, dict.fromkeys(PEER_MAX_EPOCHS, 1))
    (spec,) = [spec for spec in specs if spec["class_path"] == name]
    data = tiny_embedded_data(tmp_path / "data", n_train=8, n_test_good=2, n_test_defect=1)
    job_config = {"model": spec, "post_processor": "default", "data": data, "engine": {}}
    row = PixelRefineBenchmarkJob("cpu", 0, job_config, image_size=32, qualitative_samples=0).run()
    assert row["status"] == "ok", row["reason"]
    for column in ("image_auroc", "pixel_auroc", "mean_image_dice", "good_fp_area"):
        assert row[column] == row[column], column  # not nan
    if name == "Draem":
        assert (tmp_path / "datasets" / "pixelrefine_no_dtd").is_dir()  # created empty: no DTD download


def test_padim_with_mebin_as_a_benchmark_job(tmp_path: Path) -> None:
    if not ensure_offline_weights("tf_efficientnet_lite0"):
        pytest.skip("offline lite0 weights not installed")
    padim = {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.1", "blocks.2"], "n_features": 20}
    data = tiny_embedded_data(tmp_path / "data", n_train=8, n_test_good=2, n_test_defect=1)
    job_config = {"model": {"class_path": "Padim", "init_args": padim}, "post_processor": "mebin", "data": data}
    row = PixelRefineBenchmarkJob("cpu", 0, {**job_config, "engine": {}}, image_size=32, qualitative_samples=0).run()
    assert row["status"] == "ok", row["reason"]
    assert row["post_processor"] == "mebin"
    assert row["mean_image_dice"] == row["mean_image_dice"]
