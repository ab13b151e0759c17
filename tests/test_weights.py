"""Offline ImageNet weights: conversion, cache layout, anomalib models loading them, missing-package error."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
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
