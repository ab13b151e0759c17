"""Tests of the refining post-processors (F2PAD, PaedidRefiner) and the differentiable scorers."""

import inspect
import warnings
from pathlib import Path

import pytest
import skimage.data
import torch
import torch.nn.functional as F
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, TorchInferencer
from anomalib.engine import Engine
from anomalib.models import Padim, Patchcore
from anomalib.models.image.cflow.torch_model import CflowModel
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from anomalib_pixelrefine.checks import NoEffectWarning
from anomalib_pixelrefine.models.image.feature_ensemble import FeatureEnsembleModel
from anomalib_pixelrefine.models.image.pae import sparse_to_anomaly_map
from anomalib_pixelrefine.models.image.pni import PniModel
from anomalib_pixelrefine.post_processing import F2PAD, PaedidRefiner, get_scorer, register_scorer
from anomalib_pixelrefine.post_processing.base import dilate
from anomalib_pixelrefine.post_processing.f2pad import (
    _SECTIONS,
    crop_extents,
    crop_groups,
    flat_options,
    gather_crops,
    scatter_crops,
)
from anomalib_pixelrefine.post_processing.optim import (
    PixelAdan,
    bilateral_weights,
    exemplar_fill,
    inpaint,
    log_sparsity,
    mog_prior,
    range_penalty,
    share_gradients,
    total_variation,
)
from anomalib_pixelrefine.post_processing.scorers import FeatureScorer, available_scorers

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _texture_tiles(n: int, size: int, seed: int) -> torch.Tensor:
    """Random ``size`` px tiles of skimage's brick texture (grey -> 3 channels), in [0, 1]."""
    tex = torch.from_numpy(skimage.data.brick()).float().div(255)[None].repeat(3, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, tex.shape[1] - 2 * size, (n,), generator=gen).tolist()
    xs = torch.randint(0, tex.shape[2] - 2 * size, (n,), generator=gen).tolist()
    tiles = torch.stack([tex[:, y : y + 2 * size, x : x + 2 * size] for y, x in zip(ys, xs, strict=True)])
    return F.interpolate(tiles, size=(size, size), mode="bilinear", antialias=True)


def _fit_patchcore(train: torch.Tensor, layers: list[str]) -> PatchcoreModel:
    torch.manual_seed(0)
    model = PatchcoreModel(layers=layers, backbone="resnet18", pre_trained=False)
    model.train()
    model((train - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1))
    model.memory_bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    return model.eval()


def _refiner(**kwargs) -> F2PAD:
    refiner = F2PAD(**kwargs)
    refiner.pixel_mean.copy_(MEAN)
    refiner.pixel_std.copy_(STD)
    return refiner


def _dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    pred, target = pred.bool(), target.bool()
    return (2 * (pred & target).sum() / (pred.sum() + target.sum()).clamp_min(1)).item()


# ---------------------------------------------------------------------------------------------- loss terms
def _region(shape: tuple[int, ...]) -> torch.Tensor:
    region = torch.zeros(shape[0], 1, *shape[2:], dtype=torch.float64)
    region[..., 1:-1, 1:] = 1.0
    return region


def test_pixel_terms_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    n = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    x = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    region = _region(n.shape)
    means = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 3, 3, generator=gen, dtype=torch.float64)
    inv = a @ a.transpose(1, 2) + torch.eye(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: mog_prior(t, means, inv, region), (n,))
    assert torch.autograd.gradcheck(lambda t: total_variation(t, region), (n,))
    assert torch.autograd.gradcheck(lambda t: log_sparsity(x - t, region, 1e-4), (n,))
    outside = (n.detach() * 3 - 1).requires_grad_(True)  # values on both sides of [0, 1]
    assert torch.autograd.gradcheck(range_penalty, (outside,))


def test_pixel_terms_values() -> None:
    n = torch.zeros(1, 3, 4, 4)
    region = torch.ones(1, 1, 4, 4)
    # MoG: exact squared Mahalanobis to the nearest component, components have equal weight.
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    inv = torch.eye(3).repeat(2, 1, 1) * 4
    assert mog_prior(n + 0.25, means, inv, region).item() == pytest.approx(16 * 4 * 3 * 0.0625, rel=1e-5)
    assert total_variation(n, region, eps=0).item() == 0
    step = n.clone()
    step[..., 2:] = 1.0  # one vertical edge of height 4, 3 channels
    assert total_variation(step, region, eps=0).item() == pytest.approx(12)
    a = torch.zeros(1, 3, 4, 4)
    a[0, :2, 1, 1] = torch.tensor([0.3, 0.4])  # ||a|| = 0.5 at one pixel
    expected = torch.asinh(torch.tensor(0.5 / 0.01)).item()  # = log(sqrt(0.25 + 1e-4) + 0.5) - log(sqrt(1e-4))
    assert log_sparsity(a, region, eps=1e-4).item() == pytest.approx(expected, abs=2e-3)
    assert log_sparsity(n, region).item() < 2e-3


def test_scorer_gradients_match_finite_differences() -> None:
    train = _texture_tiles(4, 32, seed=0).double()
    patchcore = _fit_patchcore(train.float(), ["layer1", "layer2"]).double()
    torch.manual_seed(0)
    padim = PadimModel(backbone="resnet18", layers=["layer1", "layer2"], pre_trained=False, n_features=20).double()
    padim.train()
    padim(train)
    padim.fit()
    padim.eval()
    cflow = CflowModel(backbone="resnet18", layers=["layer1", "layer2"], pre_trained=False, coupling_blocks=2)
    cflow = cflow.double().eval()  # untrained flow: the scorer's gradient does not depend on training
    x0 = _texture_tiles(1, 32, seed=1).double()
    roi = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    roi[..., 8:20, 8:24] = 1
    direction = torch.randn_like(x0) * roi
    for model in (patchcore, padim, cflow):
        scorer = get_scorer(model, num_candidates=5)
        scorer.prepare(x0, roi, torch.zeros(1, 2, dtype=torch.long), (32, 32))
        x = x0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(scorer.loss(x).sum(), x)
        h = 1e-7  # float64; larger steps cross ReLU/max-pool kinks of the backbone
        numeric = (scorer.loss(x0 + h * direction) - scorer.loss(x0 - h * direction)) / (2 * h)
        analytic = (grad * direction).sum()
        assert analytic.abs() > 0
        assert numeric.item() == pytest.approx(analytic.item(), rel=1e-4)


def _fitted_project_hosts(train: torch.Tensor) -> dict[str, nn.Module]:
    """Tiny fitted PniModel (two backbones, N and P on) and FeatureEnsembleModels (memory, feature and output mode)."""
    torch.manual_seed(0)
    pni = PniModel(
        backbones=["resnet18", "resnet10t"],
        pre_trained=False,
        coreset_ratio=0.5,
        distribution_size=8,
        window=3,
        mlp_layers=2,
        mlp_width=16,
        mlp_channels=16,
        refine=False,
    )
    normalised = pni.normalise_image(train)
    for index, member in enumerate(pni.scorers):
        member.fit_memory(member.extract(normalised))
        member.score_range = torch.tensor([0.5 + index, 2.0 + index])
    hosts = {"pni": pni.eval()}
    members = [
        {"backbone": "resnet18", "layers": ["layer2", "layer3"], "pre_trained": False},
        {"backbone": "resnet10t", "layers": ["layer2"], "pre_trained": False},
    ]
    for mode, used in (("feature", members[:1]), ("output", members)):
        ensemble = FeatureEnsembleModel(members=used, mode=mode, coreset_ratio=0.5)
        ensemble.fit_transforms([train])
        ensemble.fit_memory(ensemble.transformed_features(train))
        if mode == "output":
            ensemble.calibrate([train])
        hosts[f"feature_ensemble_{mode}"] = ensemble.eval()
    return hosts


def test_project_scorers_sum_the_model_feature_map_and_descend() -> None:
    """Pni / FeatureEnsemble scorers score the map the model computes (and forward upsamples); gradients descend."""
    hosts = _fitted_project_hosts(_texture_tiles(4, 32, seed=0))
    x0 = _texture_tiles(2, 32, seed=1)
    full = torch.ones(2, 1, 32, 32)
    for name, model in hosts.items():
        scorer = get_scorer(model, feature_dilation=0)
        scorer.prepare(x0, full, torch.zeros(2, 2, dtype=torch.long), (32, 32))
        with torch.no_grad():
            feature_map = model.feature_map(x0)
            output = model(x0)
            expected = feature_map.flatten(1).sum(1)
            assert torch.equal(scorer.loss(x0), expected), name
        # forward upsamples and smooths that same map (Pni per backbone, then averaged: equal up to rounding).
        if name == "pni":
            upsampled = model.anomaly_map_generator(feature_map[:, None], (32, 32))
        else:
            upsampled = model.smoothing(F.interpolate(feature_map[:, None], size=(32, 32), mode="bilinear"))
        torch.testing.assert_close(output.anomaly_map, upsampled, rtol=1e-5, atol=1e-5)

        x = x0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(scorer.loss(x).sum(), x)
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
        step = -1e-2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        with torch.no_grad():
            assert (scorer.loss(x0 + step) < expected).all(), name
    with pytest.raises(ValueError, match="full images"):
        get_scorer(hosts["pni"]).prepare(x0[..., :16], full[..., :16], torch.zeros(2, 2, dtype=torch.long), (32, 32))


def test_gradient_sharing_matches_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 6, 7, generator=gen)
    grad = torch.randn(1, 3, 6, 7, generator=gen)
    ks, s0, s1 = 1, 1.1, 0.3
    weights = bilateral_weights(x, ks, s0, s1)
    assert torch.allclose(weights.sum(2), torch.ones(1, 1, 42))
    shared = share_gradients(grad, weights, ks)
    # Reference: explicit neighbourhood sum at one interior and one border pixel (replicate-padded colours).
    xp = F.pad(x, (ks, ks, ks, ks), mode="replicate")
    gp = F.pad(grad, (ks, ks, ks, ks))
    for i, j in [(2, 3), (0, 0)]:
        logits, values = [], []
        for di in range(-ks, ks + 1):
            for dj in range(-ks, ks + 1):
                colour = (xp[0, :, i + ks + di, j + ks + dj] - x[0, :, i, j]).pow(2).sum()
                logits.append(-(di**2 + dj**2) / s0**2 - colour / s1**2)
                values.append(gp[0, :, i + ks + di, j + ks + dj])
        w = torch.softmax(torch.stack(logits), 0)
        expected = (w[:, None] * torch.stack(values)).sum(0)
        assert torch.allclose(shared[0, :, i, j], expected, atol=1e-6)


def test_pixel_adan_matches_timm_adan() -> None:
    from timm.optim import Adan

    p = torch.randn(7, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    q = p.detach().clone()
    optimizer = Adan([p], lr=0.01, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0)
    adan = PixelAdan(q.shape, q.device, q.dtype)
    for _ in range(5):
        optimizer.zero_grad()
        p.pow(3).sum().backward()
        optimizer.step()
        q = q - adan.step(3 * q.pow(2), torch.full_like(q, 0.01))
    assert torch.allclose(p.detach(), q, atol=1e-6)
    assert not torch.allclose(q, torch.randn(7, generator=torch.Generator().manual_seed(0)))


def test_crops_roundtrip() -> None:
    roi = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    roi[0, :, 5:9, 40:50] = True
    roi[1, :, 50:60, 2:6] = True
    offsets, sizes = crop_extents(roi, context=4, align=32)
    assert sizes.tolist() == [[32, 32], [32, 32]]
    assert (offsets % 32 == 0).all()
    crops = gather_crops(roi.float(), offsets, (32, 32))
    assert crops.sum() == roi.sum()  # each ROI lies entirely in its crop
    back = scatter_crops(torch.zeros(2, 1, 64, 64), crops, offsets)
    assert torch.equal(back.bool(), roi)


def test_crop_groups_keep_each_image_crop_small() -> None:
    roi = torch.zeros(3, 1, 128, 128, dtype=torch.bool)
    roi[0, :, 5:9, 40:50] = True  # small ROI
    roi[1, :, 10:100, 20:110] = True  # large ROI
    roi[2, :, 70:75, 70:80] = True  # small ROI, same crop size as image 0
    groups = crop_groups(roi, context=4, align=32)
    sizes = {tuple(index.tolist()): size for index, _, size in groups}
    assert sizes == {(0, 2): (32, 32), (1,): (128, 128)}
    for index, offsets, size in groups:
        crops = gather_crops(roi[index].float(), offsets, size)
        assert crops.sum() == roi[index].sum()


# ---------------------------------------------------------------------------------------------- optimiser
@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_optimiser_never_nan_on_constant_and_extreme_images(value: float) -> None:
    refiner = _refiner(max_iters=15, optimisation={"check_every": 5})
    refiner.mog_means.copy_(torch.rand(5, 3))
    x = torch.full((2, 3, 16, 16), value)
    x[1, 0] = 1.0 - value  # saturated colour
    n0 = torch.rand(2, 3, 16, 16)
    n0[0] = value  # n0 == x: a = 0 exactly (adaptive step and LOG at their singular point)
    region = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    beta = torch.tensor([1e-2, 1e3])
    n, iterations = refiner.optimise(x, n0, region, beta, None, None, refiner.max_iters)
    assert torch.isfinite(n).all()
    assert (n >= 0).all()
    assert (n <= 1).all()
    assert (iterations >= 1).all()


def test_optimiser_pixel_range_penalty_pulls_back() -> None:
    refiner = _refiner(
        max_iters=30, optimisation={"alpha1": 0.0, "alpha2": 0.0, "beta0": 0.0, "adaptive_step": False, "lr": 0.05}
    )
    x = torch.full((1, 3, 8, 8), 0.5)
    n0 = torch.full((1, 3, 8, 8), 1.09)
    region = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    n, _ = refiner.optimise(x, n0, region, torch.zeros(1), None, None, refiner.max_iters)
    assert n.max() <= 1.0


def test_planted_colour_square_recovered() -> None:
    """The paper's pixel-space map (``output="pixel"``) recovers a planted square from a coarse initial mask."""
    size = 48
    train = _texture_tiles(8, size, seed=0)
    host = _fit_patchcore(train, ["layer1", "layer2"])
    image = _texture_tiles(1, size, seed=5)
    gt = torch.zeros(1, 1, size, size, dtype=torch.bool)
    gt[..., 14:30, 18:32] = True
    image = torch.where(gt, torch.tensor([0.9, 0.1, 0.6]).view(1, 3, 1, 1), image)
    refiner = _refiner(max_iters=40, optimisation={"num_candidates": 10}, output="pixel", init="inpaint")
    refiner.fit_prior(train)
    refiner.prior_fitted.fill_(True)
    # Initial host mask: a coarse, too large box around the defect (as a low-resolution host gives).
    host_map = torch.zeros(1, 1, size, size)
    host_map[..., 10:36, 12:38] = 1.0
    refiner.host_pixel_threshold.fill_(0.5)
    refined = refiner.refine_batch((image - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1), host_map, host)
    assert _dice(host_map > 0.5, gt) < 0.8
    assert _dice(refiner.binarise(refined), gt) > 0.8
    assert refiner.last_info["iterations"].item() >= refiner.check_every


def _planted_scratch(size: int) -> tuple[torch.Tensor, torch.Tensor, PatchcoreModel, torch.Tensor]:
    """Training tiles, a test tile with a dark 2 px scratch (and its mask), a PatchCore host fitted on the tiles."""
    train = _texture_tiles(8, size, seed=0)
    host = _fit_patchcore(train, ["layer1", "layer2"])
    image = _texture_tiles(1, size, seed=5)
    gt = torch.zeros(1, 1, size, size, dtype=torch.bool)
    gt[..., 22:24, 10:38] = True
    return train, torch.where(gt, torch.tensor(0.05), image), host, gt


@pytest.mark.parametrize(
    ("init", "max_iters", "min_dice"), [("exemplar", 0, 0.45), ("inpaint", 0, 0.6), ("inpaint", 20, 0.85)]
)
def test_host_unit_output_sharpens_the_host_mask(init: str, max_iters: int, min_dice: float) -> None:
    """Default output: the host's own map and threshold, sharpened to the scratch; outside the ROI unchanged.

    Measured (host mask Dice 0.21): exemplar background alone 0.49 (8 brick tiles of 48 px: their windows do not
    continue this tile's mortar lines), Telea inpainting alone 0.68, 20 steps from Telea 0.95.
    """
    size = 48
    train, image, host, gt = _planted_scratch(size)
    refiner = _refiner(max_iters=max_iters, optimisation={"num_candidates": 10}, init=init)
    refiner.fit_prior(train)
    refiner.prior_fitted.fill_(True)
    inputs = (image - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    host_map = host(inputs).anomaly_map.reshape(1, 1, size, size)
    threshold = float(host_map.amin() + 0.5 * (host_map.amax() - host_map.amin()))
    refiner.host_pixel_threshold.fill_(threshold)
    refined = refiner.refine_batch(inputs, host_map, host)
    host_dice = _dice(host_map > threshold, gt)
    refined_dice = _dice(refiner.binarise(refined), gt)  # fallback threshold: the host's, as in the map's units
    assert refined_dice > host_dice + 0.2
    assert refined_dice > min_dice
    roi = refiner.last_info["initial_masks"]
    outside = ~dilate(roi, refiner.roi_dilation)
    assert torch.equal(refined[outside], host_map[outside])
    assert refined[refiner.last_info["support"]].amin() >= host_map.amax() - 1e-6  # support at the image's peak


def test_image_decision_fills_the_empty_mask_of_a_flagged_image() -> None:
    """An image above the image threshold whose map stays below the pixel threshold gets a mask on its defect."""
    size = 48
    train, image, host, gt = _planted_scratch(size)
    refiner = _refiner()
    refiner.fit_prior(train)
    refiner.prior_fitted.fill_(True)
    inputs = (image - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    host_map = host(inputs).anomaly_map.reshape(1, 1, size, size)
    refiner.host_pixel_threshold.fill_(float(host_map.amax()) * 1.01)  # the host's mask is empty
    refiner._image_threshold.fill_(1.0)
    flagged = refiner.refine_batch(inputs, host_map, host, torch.tensor([2.0]))
    assert _dice(refiner.binarise(flagged), gt) > 0.3
    not_flagged = refiner.refine_batch(inputs, host_map, host, torch.tensor([0.5]))
    assert torch.equal(not_flagged, host_map)
    assert not refiner.binarise(not_flagged).any()
    refiner.follow_image_decision = False
    assert torch.equal(refiner.refine_batch(inputs, host_map, host, torch.tensor([2.0])), host_map)


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_host_error_names_model() -> None:
    with pytest.raises(TypeError, match=r"No differentiable F2PAD scorer .* 'Linear'"):
        get_scorer(nn.Linear(2, 2))


def test_register_scorer_adds_host() -> None:
    class Toy(nn.Module):
        pass

    @register_scorer(Toy)
    class ToyScorer(FeatureScorer):
        pass

    assert available_scorers()["Toy"] == "ToyScorer"
    assert isinstance(get_scorer(Toy()), ToyScorer)


def test_bad_arguments_and_unfitted_prior() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        F2PAD(init="mae")
    with pytest.raises(RuntimeError, match="no fitted prior"):
        F2PAD().refine_batch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), nn.Identity())


# ---------------------------------------------------------------------------------------------- Engine
def _engine_fit(model: nn.Module, data_root: Path, root: Path) -> tuple[Engine, MVTecAD]:
    """Fit ``model`` for one epoch on the tiny gravel data (batches of 4) -> ``(engine, datamodule)``."""
    datamodule = MVTecAD(root=data_root, category="gravel", num_workers=0, train_batch_size=4, eval_batch_size=4)
    engine = Engine(accelerator="cpu", devices=1, logger=False, max_epochs=1, default_root_dir=root)
    engine.fit(model, datamodule=datamodule)
    return engine, datamodule


@pytest.fixture(scope="module")
def fitted(tiny_mvtec_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("f2pad_engine")
    model = Patchcore(
        backbone="resnet18",
        layers=["layer2", "layer3"],
        pre_trained=False,
        coreset_sampling_ratio=0.5,
        pre_processor=Patchcore.configure_pre_processor(image_size=(64, 64)),
        post_processor=F2PAD(max_iters=10),
    )
    engine, datamodule = _engine_fit(model, tiny_mvtec_root, root)
    return engine, model, datamodule, root


def test_engine_fit_calibrates_host_unit_maps_with_the_host_threshold(fitted: tuple) -> None:
    _, model, _, _ = fitted
    refiner = model.post_processor
    assert bool(refiner.prior_fitted)
    assert torch.isfinite(refiner.host_pixel_threshold)
    # Host-unit output: the deployed pixel threshold is the host's own (validation is not refined).
    assert refiner._pixel_threshold.item() == pytest.approx(refiner.host_pixel_threshold.item())
    assert torch.allclose(refiner.pixel_std, STD)


def test_pixel_output_calibrates_on_refined_maps(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    model = Padim(
        backbone="resnet18",
        layers=["layer1", "layer2"],
        pre_trained=False,
        n_features=20,
        pre_processor=Padim.configure_pre_processor(image_size=(32, 32)),
        post_processor=F2PAD(max_iters=2, output="pixel"),
    )
    _engine_fit(model, tiny_mvtec_root, tmp_path)
    refiner = model.post_processor
    # Refined maps are ||x - n|| in [0, sqrt(3)], host PaDiM distances are not: distinct calibrations.
    assert 0 < refiner._pixel_threshold.item() < 2.0
    assert refiner._pixel_threshold.item() != pytest.approx(refiner.host_pixel_threshold.item())


def test_engine_test_and_predict_refine_every_image(fitted: tuple) -> None:
    engine, model, datamodule, _ = fitted
    results = engine.test(model, datamodule=datamodule)
    assert "pixel_AUROC" in results[0]
    predictions = engine.predict(model, datamodule=datamodule)
    count = 0
    for batch in predictions:
        assert batch.pred_mask.dtype == torch.bool
        assert batch.pred_mask.shape == batch.anomaly_map.shape
        assert torch.isfinite(batch.anomaly_map).all()
        count += len(batch.image)
    assert count == len(datamodule.test_data) or count == len(datamodule.predict_data)


def test_checkpoint_reload_and_torch_export(fitted: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # TorchInferencer loads our own pickled export
    engine, model, datamodule, root = fitted
    ckpt = root / "f2pad.ckpt"
    engine.trainer.save_checkpoint(ckpt)
    reloaded = Patchcore.load_from_checkpoint(ckpt, post_processor=F2PAD(), map_location="cpu")
    assert isinstance(reloaded.post_processor, F2PAD)
    assert reloaded.post_processor.max_iters == 10  # restored from the checkpoint config
    assert torch.equal(reloaded.post_processor.mog_means, model.post_processor.mog_means)
    assert bool(reloaded.post_processor.prior_fitted)

    batch = next(iter(datamodule.test_dataloader()))
    model.eval()
    direct = model(batch.image)  # AnomalibModule.forward = pre-processor -> host -> F2PAD.forward
    assert direct.pred_mask.dtype == torch.bool

    export_dir = engine.export(model, ExportType.TORCH, export_root=root / "export")
    inferencer = TorchInferencer(path=export_dir, device="cpu")
    result = inferencer.predict(batch.image[:1])
    assert result.anomaly_map.shape[-2:] == (64, 64)
    assert result.pred_mask.dtype == torch.bool
    assert torch.allclose(result.anomaly_map.flatten(), direct.anomaly_map[:1].flatten(), atol=1e-4)

    with pytest.raises(Exception, match="ONNX/OpenVINO graphs cannot express"):
        engine.export(model, ExportType.ONNX, export_root=root / "onnx")


def test_whole_module_refines_right_after_fit_and_without_engine(fitted: tuple) -> None:
    """Issue 18 item 2: model(images) after Engine.fit, and on a host built and loaded without any Engine."""
    _, model, datamodule, _ = fitted
    images = next(iter(datamodule.test_dataloader())).image
    model.eval()
    direct = model(images)
    assert direct.pred_mask.dtype == torch.bool

    fresh = Patchcore(
        backbone="resnet18",
        layers=["layer2", "layer3"],
        pre_trained=False,
        pre_processor=Patchcore.configure_pre_processor(image_size=(64, 64)),
        post_processor=F2PAD(max_iters=10),
    )
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.eval()(images).anomaly_map, direct.anomaly_map)
    # A refiner assigned later is wired to the host too.
    fresh.post_processor = F2PAD(max_iters=10)
    fresh.post_processor.load_state_dict(model.post_processor.state_dict())
    torch.testing.assert_close(fresh(images).anomaly_map, direct.anomaly_map)


def test_checkpoint_restores_refiner_without_arguments_or_into_a_fresh_one(
    fitted: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19 A3: Host.load_from_checkpoint(ckpt) rebuilds the refiner; a fresh refiner takes any buffer shapes."""
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    engine, model, datamodule, root = fitted
    ckpt = root / "f2pad_restore.ckpt"
    engine.trainer.save_checkpoint(ckpt)
    images = next(iter(datamodule.test_dataloader())).image
    model.eval()
    expected = model(images).anomaly_map

    plain = Patchcore.load_from_checkpoint(ckpt, map_location="cpu")
    assert isinstance(plain.post_processor, F2PAD)
    assert plain.post_processor.max_iters == 10
    torch.testing.assert_close(plain.eval()(images).anomaly_map, expected)

    fresh = Patchcore.load_from_checkpoint(
        ckpt, post_processor=F2PAD(max_iters=10, optimisation={"n_components": 2}), map_location="cpu"
    )
    assert fresh.post_processor.mog_means.shape == model.post_processor.mog_means.shape  # (5, 3) from the checkpoint
    export = engine.export(fresh, ExportType.TORCH, export_root=root / "export_fresh")
    result = TorchInferencer(path=export, device="cpu").predict(images)
    torch.testing.assert_close(result.anomaly_map.reshape(expected.shape), expected)


#: F2PAD's constructor arguments before the options were grouped (what its checkpoints' hyper-parameters record).
FLAT_F2PAD_ARGS = (
    "alpha1", "alpha2", "beta0", "n_components", "log_eps", "lr", "gamma0", "gamma_max", "adaptive_step",
    "gradient_sharing", "ks", "sigma0", "sigma1", "clip", "range_weight", "max_iters", "tol", "check_every",
    "roi_local", "context", "num_candidates", "init", "num_exemplars", "exemplar_windows", "reestimate",
    "reestimate_iters", "pae_epochs", "pae_channels", "prior_pixels", "crop_align",
)  # fmt: skip


def test_checkpoint_with_flat_f2pad_arguments_still_loads(fitted: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint whose hyper-parameters hold the flat arguments (as earlier versions wrote them) loads as before."""
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    engine, model, datamodule, root = fitted
    ckpt = root / "f2pad_flat.ckpt"
    engine.trainer.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)  # this test's own file
    refiner = model.post_processor
    init_args = checkpoint["hyper_parameters"]["post_processor"]["init_args"]
    assert {"optimisation", "exemplar", "pae_prior"} <= set(init_args)  # the current format: sections
    flat = {key: value for key, value in init_args.items() if key not in {"optimisation", "exemplar", "pae_prior"}}
    flat |= {name: getattr(refiner, name) for name in FLAT_F2PAD_ARGS}
    flat["check_every"] = 5  # read from the flat keyword; checkpoint_config then restores the saved 10
    checkpoint["hyper_parameters"]["post_processor"]["init_args"] = flat
    torch.save(checkpoint, ckpt)

    images = next(iter(datamodule.test_dataloader())).image
    expected = model.eval()(images).anomaly_map
    with pytest.warns(FutureWarning, match="flat keyword"):
        loaded = Patchcore.load_from_checkpoint(ckpt, map_location="cpu")
    assert isinstance(loaded.post_processor, F2PAD)
    assert loaded.post_processor.optimisation == refiner.optimisation
    assert (loaded.post_processor.max_iters, loaded.post_processor.exemplar) == (10, refiner.exemplar)
    torch.testing.assert_close(loaded.eval()(images).anomaly_map, expected)


def test_f2pad_sections_validate_their_keys_and_warn_when_their_mode_is_off() -> None:
    legacy = set(inspect.signature(flat_options).parameters) - {"_"}
    assert legacy == {attribute for keys in _SECTIONS.values() for attribute in keys.values()}  # every option once
    refiner = F2PAD(init="inpaint", max_iters=50, optimisation={"alpha1": 0.0})
    assert (refiner.alpha1, refiner.alpha2, refiner.max_iters) == (0.0, 0.02, 50)
    assert refiner.init_args()["optimisation"]["alpha1"] == 0.0  # recorded as plain data
    with pytest.raises(ValueError, match="F2PAD: unknown optimisation key"):
        F2PAD(optimisation={"alpha": 0.0})
    with pytest.raises(ValueError, match="F2PAD: alpha1 given both flat and in optimisation"):
        F2PAD(alpha1=0.1, optimisation={"alpha1": 0.0})
    with pytest.warns(NoEffectWarning, match=r"optimisation.lr has no effect with max_iters=0"):
        F2PAD(optimisation={"lr": 0.05})
    with pytest.warns(NoEffectWarning, match=r'exemplar.windows has no effect with init="inpaint"'):
        F2PAD(init="inpaint", max_iters=5, exemplar={"windows": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F2PAD()  # the default path sets nothing it ignores
        F2PAD(init="inpaint", max_iters=5, optimisation={"lr": 0.05})
        F2PAD(**F2PAD(exemplar={"windows": 1}).init_args())  # defaults recorded in checkpoints do not warn


def test_paedid_refiner_in_engine(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Padim(
        backbone="resnet18",
        layers=["layer1", "layer2"],
        pre_trained=False,
        n_features=50,
        pre_processor=Padim.configure_pre_processor(image_size=(64, 64)),
        post_processor=PaedidRefiner(pae_epochs=2, steps=10),
    )
    engine, datamodule = _engine_fit(model, tiny_mvtec_root, tmp_path)
    assert model.post_processor.pae.is_fitted
    predictions = engine.predict(model, datamodule=datamodule)
    maps = torch.cat([batch.anomaly_map.flatten(1) for batch in predictions])
    assert torch.isfinite(maps).all()
    assert maps.max() > 0


def _periodic(shift_y: torch.Tensor, shift_x: torch.Tensor, size: int = 40) -> torch.Tensor:
    """2-D periodic colour pattern (periods 7 and 5 px) with the given phase shifts -> ``(B, 3, size, size)``."""
    ys = torch.arange(size).view(1, -1, 1) + shift_y.view(-1, 1, 1)
    xs = torch.arange(size).view(1, 1, -1) + shift_x.view(-1, 1, 1)
    grey = 0.5 + 0.25 * torch.sin(2 * torch.pi * xs / 7) + 0.2 * torch.sin(2 * torch.pi * ys / 5)
    return torch.stack([grey, grey * 0.8, 1 - grey], 1)


@pytest.mark.parametrize("size", [40, 272])  # 272 px: the coarse search runs at 1/3 (bounded to ~128 px)
def test_exemplar_fill_continues_the_texture_where_telea_smears(size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    bank = _periodic(torch.randint(0, 35, (6,), generator=gen), torch.randint(0, 35, (6,), generator=gen), size)
    clean = _periodic(torch.tensor([3, 11]), torch.tensor([4, 2]), size)
    mask = torch.zeros(2, 1, size, size, dtype=torch.bool)
    mask[0, :, 12:28, 10:26] = True  # a large square
    image = torch.where(mask, torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1), clean)
    filled = exemplar_fill(image, mask, bank)
    telea = inpaint(image, mask)
    inside = mask[0].expand(3, -1, -1)
    exemplar_error = (filled[0] - clean[0])[inside].abs().mean()
    telea_error = (telea[0] - clean[0])[inside].abs().mean()
    assert exemplar_error < 0.02 < 0.05 < telea_error
    assert torch.equal(filled[~mask.expand_as(filled)], image[~mask.expand_as(image)])  # known pixels and image 1
    # No known pixel around the mask: Telea's fallback, not an error.
    full = torch.ones(1, 1, size, size, dtype=torch.bool)
    assert torch.isfinite(exemplar_fill(image[:1], full, bank)).all()


def test_exemplar_windows_explain_each_pixel_by_the_closest_normal_window() -> None:
    """Half the box is one training texture, half another: one window explains half, two explain all but the defect."""
    size = 40
    gen = torch.Generator().manual_seed(1)
    bank = F.avg_pool2d(torch.rand(6, 3, size + 2, size + 2, generator=gen), 3, 1)  # smooth random textures
    clean = torch.cat([bank[:1, ..., : size // 2], bank[1:2, ..., size // 2 :]], -1)
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., 10:30, 10:30] = True
    stroke = torch.zeros_like(mask)
    stroke[..., 19:21, 12:28] = True  # the defect: a dark bar across both halves
    image = torch.where(stroke, torch.zeros(1, 3, 1, 1), clean)
    residual = {k: (exemplar_fill(image, mask, bank, windows=k) - image).abs().sum(1, keepdim=True) for k in (1, 2)}
    normal = mask & ~stroke
    assert residual[2][normal].mean() < 0.03 < 0.1 < residual[1][normal].mean()  # one window misses a half
    assert residual[2][stroke].mean() > 0.5  # no normal window explains the defect
    with pytest.raises(ValueError, match="exemplar_windows"):
        F2PAD(exemplar={"windows": 0})


def test_exemplar_initialisation_keeps_training_images_through_a_checkpoint() -> None:
    train = _texture_tiles(6, 32, seed=0)
    refiner = _refiner(init="exemplar", exemplar={"images": 4})
    with pytest.raises(RuntimeError, match="no stored training images"):
        refiner.initial_background(train[:1], torch.ones(1, 1, 32, 32, dtype=torch.bool), torch.zeros(1, 1, 32, 32))
    refiner.fit_prior(train)
    assert refiner.exemplars.shape == (4, 3, 32, 32)
    fresh = F2PAD(init="exemplar")
    fresh.load_state_dict(refiner.state_dict())
    assert torch.equal(fresh.exemplars, refiner.exemplars)


def test_paedid_refiner_decomposes_with_the_settings_stored_on_its_pae() -> None:
    """Issue 19: one place for the decomposition settings (the PAE's), used through ``PaeModel.split``."""
    refiner = PaedidRefiner(channels=(8, 16), pae_epochs=1, alpha=0.2, lam=0.3, steps=4, lr=0.02, output="pixel")
    pae = refiner.pae
    assert (pae.alpha, pae.lam, pae.decomposition_steps, pae.decomposition_lr) == (0.2, 0.3, 4, 0.02)
    refiner.lam, refiner.noisy, refiner.lam_ssim = 0.6, True, 0.5  # tuning a refiner tunes its PAE
    assert (pae.lam, pae.noisy, pae.lam_ssim) == (0.6, True, 0.5)
    refiner.fit_prior(_texture_tiles(6, 32, seed=0))
    images = _texture_tiles(2, 32, seed=3)
    host = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = refiner.refine_maps(images, host, host > 0.5, nn.Identity())
    _, sparse = pae.split(images, pae.deep_prior(images, patch_scores=host))
    torch.testing.assert_close(maps, sparse_to_anomaly_map(sparse))
    # The saved configuration restores onto the PAE, also when the architecture differs and the PAE is rebuilt.
    other = PaedidRefiner(channels=(4,))
    other.load_checkpoint_config(refiner.checkpoint_config())
    restored = other.pae
    assert restored.channels == (8, 16)
    assert (restored.alpha, restored.lam, restored.decomposition_steps, restored.noisy) == (0.2, 0.6, 4, True)
    assert other.init_args()["lam"] == 0.6


def test_pae_initialisation_fills_only_the_mask() -> None:
    train = _texture_tiles(6, 32, seed=0)
    refiner = _refiner(init="pae", pae_prior={"epochs": 1})
    refiner.fit_prior(train)
    assert refiner.pae.is_fitted
    image = _texture_tiles(2, 32, seed=3)
    fill = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    fill[..., 8:16, 8:20] = True
    n0 = refiner.initial_background(image, fill, fill.float())
    assert torch.isfinite(n0).all()
    assert torch.equal(n0[~fill.expand_as(n0)], image[~fill.expand_as(image)])
    assert not torch.equal(n0[fill.expand_as(n0)], image[fill.expand_as(image)])


def _halo_case(thin: bool) -> tuple[torch.Tensor, ...]:
    """A 64 px scene: a compact core (or a 2 px line) inside the host's above-threshold region, ROI around it."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    radius = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt()
    core = (yy - 32).abs() <= 1 if thin else radius <= 6
    host = (radius <= 11) if not thin else (yy - 32).abs() <= 5  # the host's blurred region
    residual = 0.05 * torch.rand(64, 64, generator=generator)  # background mismatch of the refinement
    residual = torch.where(core, torch.ones(()), residual)
    roi = radius <= 20 if not thin else (yy - 32).abs() <= 12
    host_maps = torch.where(host, 2.0, 0.0)
    as_batch = [t.reshape(1, 1, 64, 64) for t in (core, residual, host_maps, roi)]
    return (*as_batch, host)


@pytest.mark.parametrize("halo", [0.0, 0.06])
def test_faint_extent_keeps_the_host_region_of_a_haloed_core_only(halo: float) -> None:
    core, residual, host_maps, roi, host = _halo_case(thin=False)
    ring = (host & ~core[0, 0]).reshape(core.shape)
    residual = residual + halo * ring  # a faint tinted halo: about the mismatch level per pixel, not as a region
    refiner = _refiner()
    refiner.host_pixel_threshold.fill_(1.0)
    extent = refiner.faint_extent(core, residual, host_maps, roi)
    assert bool(extent.any()) == (halo > 0)
    if halo > 0:
        assert torch.equal(extent, ring)  # exactly the host's region around the core
    refiner.extent_contrast = None
    assert not refiner.faint_extent(core, residual, host_maps, roi).any()


def test_faint_extent_never_widens_a_thin_defect() -> None:
    line, residual, host_maps, roi, host = _halo_case(thin=True)
    residual = residual + 0.06 * (host.reshape(line.shape) & ~line)  # even with a faint band along it
    refiner = _refiner()
    refiner.host_pixel_threshold.fill_(1.0)
    assert not refiner.faint_extent(line, residual, host_maps, roi).any()
