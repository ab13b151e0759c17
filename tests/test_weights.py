"""Offline ImageNet weights: conversion, cache layout, anomalib models loading them, missing-package error."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file
from skimage import data as skdata
from torch.nn import functional as F

from anomalib_pixelrefine import weights
from anomalib_pixelrefine.weights import MissingWeightsError, convert_weights, install_weights, weights_status


def _chelsea(size: int) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(skdata.chelsea())).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)


def test_converted_lite0_classifies_chelsea_as_a_cat() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(convert_weights("tf_efficientnet_lite0"))
    with torch.no_grad():
        probabilities = model((_chelsea(224) - 0.5) / 0.5).softmax(-1)[0]
    assert 281 <= int(probabilities.argmax()) <= 285  # ImageNet's domestic cat classes
    assert float(probabilities.max()) > 0.5


def test_installed_cache_is_what_anomalib_patchcore_loads(tmp_path, monkeypatch) -> None:
    from anomalib.models import Patchcore

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    paths = install_weights(["tf_efficientnet_lite0"])
    root = tmp_path / "models--timm--tf_efficientnet_lite0.in1k"
    revision = (root / "refs" / "main").read_text()
    assert paths["tf_efficientnet_lite0"] == root / "snapshots" / revision / "model.safetensors"
    assert weights_status()["tf_efficientnet_lite0"]["installed"] is True
    # Installing again keeps the snapshot (same content, same revision).
    assert install_weights(["tf_efficientnet_lite0"]) == paths

    model = Patchcore(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"], pre_trained=True)
    stem = model.model.feature_extractor.feature_extractor.conv_stem.weight
    assert torch.equal(stem, convert_weights("tf_efficientnet_lite0")["conv_stem.weight"])


def test_missing_package_gives_a_one_line_error_naming_it(monkeypatch) -> None:
    missing = weights._WeightsPackage("efficientnet-lite9-pytorch-model", "no_such_module_xyz", "X", "timm/x")
    monkeypatch.setitem(weights.OFFLINE_BACKBONES, "tf_efficientnet_lite0", missing)
    with pytest.raises(MissingWeightsError, match="efficientnet-lite9-pytorch-model") as error:
        install_weights(["tf_efficientnet_lite0"])
    assert "\n" not in str(error.value)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="No offline weights for backbone 'resnet18'"):
        install_weights(["resnet18"])


# ------------------------------------------------------------------------------ issue 29, item 6: broken caches
@pytest.mark.parametrize("with_digest", [True, False])
def test_truncated_cached_file_is_listed_broken_and_repaired_without_force(tmp_path, monkeypatch, with_digest) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    path = install_weights(["tf_efficientnet_lite0"])["tf_efficientnet_lite0"]
    good = path.read_bytes()
    if not with_digest:  # as installed by a version that did not record the SHA-256
        path.with_name("model.safetensors.sha256").unlink()
    path.write_bytes(good[: len(good) // 2])
    row = weights_status()["tf_efficientnet_lite0"]
    assert row["installed"] is False
    assert str(path) in row["broken"]
    assert "broken:" in weights.run_weights()
    install_weights(["tf_efficientnet_lite0"])  # no force: the broken file is rewritten
    repaired = load_file(path)  # (safetensors may order its header differently: compare the tensors)
    reference = convert_weights("tf_efficientnet_lite0")
    assert repaired.keys() == reference.keys()
    assert all(torch.equal(repaired[key], reference[key]) for key in reference)
    assert weights_status()["tf_efficientnet_lite0"]["installed"] is True


def test_unwritable_cache_and_missing_package_are_one_line_from_the_cli(tmp_path) -> None:
    import os
    import subprocess
    import sys

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")  # the cache lies below a file: nothing can be written (also as root)
    env = {**os.environ, "HF_HUB_CACHE": str(blocker / "hub")}
    script = "from anomalib_pixelrefine.cli import main; main()"
    command = [sys.executable, "-c", script, "weights", "--install", "true", "--names", "[tf_efficientnet_lite0]"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("pixelrefine: error: Cannot write the tf_efficientnet_lite0")
    assert "HF_HUB_CACHE" in out.stderr
    assert "Traceback" not in out.stderr
    # A missing weights package (simulated: lite0's package renamed to one that does not exist).
    script = (
        "from anomalib_pixelrefine import weights\n"
        "weights.OFFLINE_BACKBONES['tf_efficientnet_lite0'] = weights._WeightsPackage("
        "'efficientnet-lite9-pytorch-model', 'no_such_module_xyz', 'X', 'timm/x')\n"
        "from anomalib_pixelrefine.cli import main; main()"
    )
    command[2] = script
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("pixelrefine: error: Weights of tf_efficientnet_lite0 need the package")
    assert "Traceback" not in out.stderr
