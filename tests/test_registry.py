"""Tests of the short-name registry and the model look-ups built on it."""

import pytest
from anomalib.models import Padim, get_model
from anomalib.post_processing import PostProcessor

from anomalib_pixelrefine import registry
from anomalib_pixelrefine.cli import translate_model_args
from anomalib_pixelrefine.metrics import BestIoU
from anomalib_pixelrefine.models import FeatureEnsemble, Pae, Pni
from anomalib_pixelrefine.post_processing import F2PAD, PaedidRefiner


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Pni", Pni),
        ("pni", Pni),
        ("Pae", Pae),
        ("FeatureEnsemble", FeatureEnsemble),
        ("feature_ensemble", FeatureEnsemble),
        ("Padim", Padim),
        ("padim", Padim),
        ("anomalib_pixelrefine.models.Pni", Pni),
    ],
)
def test_model_names_resolve(name, cls):
    assert registry.model_class(name) is cls


def test_anomalib_get_model_finds_our_models_once_imported():
    model = get_model("Pni", backbone="resnet18", pre_trained=False)
    assert isinstance(model, Pni)
    assert isinstance(registry.get_model("pae", channels=[8, 16]), Pae)


@pytest.mark.parametrize(
    ("name", "cls"), [("default", PostProcessor), ("F2PAD", F2PAD), ("f2pad", F2PAD), ("paedid", PaedidRefiner)]
)
def test_post_processor_names_resolve(name, cls):
    assert registry.post_processor_class(name) is cls


def test_metric_names_resolve():
    assert registry.import_object(registry.metric_path("best_iou")) is BestIoU
    assert registry.metric_path("AUROC") == "anomalib.metrics.AUROC"


@pytest.mark.parametrize(
    ("lookup", "name"),
    [(registry.model_path, "nonsense"), (registry.post_processor_path, "nonsense"), (registry.metric_path, "nonsense")],
)
def test_unknown_names_raise(lookup, name):
    with pytest.raises(ValueError, match="nonsense"):
        lookup(name)


def test_cli_model_short_names_become_class_paths():
    args = ["train", "--model", "pni", "--model.backbone", "resnet18", "--data", "MVTecAD"]
    assert translate_model_args(args)[2] == registry.MODELS["pni"]
    assert translate_model_args(["fit", "--model=feature_ensemble"]) == [
        "fit",
        f"--model={registry.MODELS['featureensemble']}",
    ]
    assert translate_model_args(["fit", "--model", "Unknown"]) == ["fit", "--model", "Unknown"]
    assert translate_model_args(["fit", "--model", "cfg.yaml"]) == ["fit", "--model", "cfg.yaml"]
