"""Tests for the PNI model (tiny images, resnet18 without pretrained weights, few MLP steps)."""

import inspect
import itertools
import warnings

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, TorchInferencer
from anomalib.engine import Engine

from anomalib_pixelrefine.checks import NoEffectWarning
from anomalib_pixelrefine.models.components import greedy_coreset
from anomalib_pixelrefine.models.image.pni import Pni, PniModel, PniScorer, position_histogram, refinement_loss
from anomalib_pixelrefine.models.image.pni import torch_model as pni_torch

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "backbone": "resnet18",
    "pre_trained": False,
    "coreset_ratio": 0.2,
    "distribution_size": 32,
    "window": 3,
    "mlp_layers": 2,
    "mlp_width": 32,
    "mlp_channels": 16,
    "mlp_epochs": 1,
    "mlp_batch_size": 64,
    "refine": True,  # the full model (the class default is the CPU setting without R)
    "refine_epochs": 1,
    "refine_channels": [8, 16],
}


@pytest.fixture(scope="module")
def scorer() -> PniScorer:
    return PniScorer(backbone="resnet18", pre_trained=False, coreset_ratio=0.25, distribution_size=12, window=3)


def _fit_random(scorer: PniScorer, seed: int = 0, shape=(3, 5, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n, h, w = shape
    feats = torch.randn(n, scorer.feature_dim, h, w, generator=gen)
    return feats, scorer.fit_memory(feats)


# ---------------------------------------------------------------- histograms and targets
def test_position_histogram_matches_loops_and_is_normalised():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (4, 6, 7), generator=gen)
    hist = position_histogram(targets, n_classes=5, window=3)
    assert hist.shape == (6 * 7, 5)
    torch.testing.assert_close(hist.sum(1), torch.ones(42))
    expected = torch.zeros(6, 7, 5)
    for img, i, j in itertools.product(range(4), range(6), range(7)):
        c = targets[img, i, j]
        for a, b in itertools.product(range(i - 1, i + 2), range(j - 1, j + 2)):
            if 0 <= a < 6 and 0 <= b < 7:
                expected[a, b, c] += 1
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(hist, expected.reshape(42, 5))


def test_coresets_mapping_and_mlp_targets(scorer):
    feats, targets = _fit_random(scorer)
    patches = feats.permute(0, 2, 3, 1).reshape(-1, scorer.feature_dim)
    n_emb = int(patches.shape[0] * 0.25)
    order = greedy_coreset(patches, n_emb, projection_dim=scorer.projection_dim, seed=scorer.seed)
    torch.testing.assert_close(scorer.embedding_coreset, patches[order])
    assert scorer.n_dist == min(12, n_emb)
    dist = patches[order[: scorer.n_dist]]  # the distribution coreset is the greedy prefix
    # Targets: nearest distribution entry (rank) of every training patch.
    torch.testing.assert_close(targets.reshape(-1), torch.cdist(patches, dist).argmin(1))
    # Mapping embedding -> distribution rank; distribution entries map to themselves.
    torch.testing.assert_close(scorer.emb_to_dist, torch.cdist(scorer.embedding_coreset, dist).argmin(1))
    assert scorer.emb_to_dist[: scorer.n_dist].tolist() == list(range(scorer.n_dist))
    # CSR layout lists every embedding row exactly once, grouped by class.
    members = scorer.class_members.tolist()
    assert sorted(members) == list(range(n_emb))
    for rank in range(scorer.n_dist):
        lo, hi = scorer.class_offsets[rank], scorer.class_offsets[rank + 1]
        assert all(scorer.emb_to_dist[m] == rank for m in members[lo:hi])
    # Position histogram of the fitted targets is normalised per position.
    torch.testing.assert_close(scorer.position_hist.sum(1), torch.ones(5 * 6))


def test_neighbourhood_inputs_exclude_centre():
    feats = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    padded = torch.nn.functional.pad(feats, (1, 1, 1, 1))
    inputs = pni_torch.neighbourhood_inputs(padded, torch.tensor([1]), torch.tensor([2]), torch.tensor([1]), 3)
    window = feats[1, 0, 1:4, 0:3].reshape(-1)
    expected = torch.cat([window[:4], window[5:]])
    torch.testing.assert_close(inputs[0], expected)


def test_mlp_loss_uses_target_of_centre(scorer):
    feats, targets = _fit_random(scorer, seed=1)
    padded = scorer.pad_for_mlp(feats)
    index = torch.arange(targets.numel())
    scorer.mlp.eval()
    loss = scorer.mlp_loss(padded, targets, index)
    n, h, w = targets.shape
    rows = torch.arange(h).repeat_interleave(w).repeat(n)
    cols = torch.arange(w).repeat(h * n)
    imgs = torch.arange(n).repeat_interleave(h * w)
    logits = scorer.mlp_logits(pni_torch.neighbourhood_inputs(padded, imgs, rows, cols, scorer.window))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, targets.reshape(-1)))
    assert logits.shape[1] == scorer.n_dist


# ---------------------------------------------------------------- masked nearest neighbour
def _brute_force_masked_nearest(
    scorer: PniScorer, patches: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for eq. (4): distance to the nearest allowed entry (``inf`` if none) and with the plain-NN fallback."""
    dist = torch.cdist(patches, scorer.embedding_coreset)
    masked = dist.masked_fill(~allowed[:, scorer.emb_to_dist], float("inf")).min(1).values
    return masked, torch.where(torch.isinf(masked), dist.min(1).values, masked)


@pytest.mark.parametrize("search", ["sparse", "dense", "auto"])
def test_masked_nearest_equals_brute_force(scorer, search, monkeypatch):
    monkeypatch.setattr(pni_torch, "_PAIR_CHUNK", 37)  # exercise chunk boundaries of the pair walk
    monkeypatch.setattr(pni_torch, "_NN_CHUNK", 50)
    _fit_random(scorer, seed=2)
    gen = torch.Generator().manual_seed(3)
    patches = torch.randn(120, scorer.feature_dim, generator=gen)
    allowed = torch.rand(120, scorer.n_dist, generator=gen) < 0.2
    allowed[:5] = False  # no allowed class: fallback to the plain nearest neighbour
    got = scorer.masked_nearest(patches, allowed, search=search)
    masked, expected = _brute_force_masked_nearest(scorer, patches, allowed)
    assert bool(torch.isinf(masked[:5]).all())  # the rows without an allowed entry take the fallback
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Restricting candidates can only increase the distance.
    plain = torch.cdist(patches, scorer.embedding_coreset).min(1).values
    assert bool((got >= plain - 1e-4).all())


def test_masked_nearest_many_matches_single_masks(scorer):
    _fit_random(scorer, seed=4)
    gen = torch.Generator().manual_seed(5)
    patches = torch.randn(40, scorer.feature_dim, generator=gen)
    masks = [torch.rand(40, scorer.n_dist, generator=gen) < q for q in (0.05, 0.6)]
    many = scorer.masked_nearest_many(patches, masks, search="auto")
    for row, mask in zip(many, masks, strict=True):
        torch.testing.assert_close(row, scorer.masked_nearest(patches, mask, search="sparse"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("combine", ["score", "probability"])
def test_combine_of_n_and_p_equals_brute_force(combine):
    """``score``: mean of the N- and P-masked distances; ``probability`` (eq. 6): one mask on the mean probability."""
    scorer = PniScorer(
        backbone="resnet18", pre_trained=False, coreset_ratio=0.5, distribution_size=8, window=3, combine=combine
    ).eval()
    feats, _ = _fit_random(scorer, seed=9, shape=(3, 5, 6))
    test = feats[:2] + 0.5 * torch.randn(feats[:2].shape, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        got = scorer.patch_scores(test).reshape(-1)
        p_n = scorer.neighbourhood_probabilities(test)
    p_p = scorer.position_hist.repeat(2, 1)
    patches = test.permute(0, 2, 3, 1).reshape(-1, scorer.feature_dim)

    def masked(probs: torch.Tensor) -> torch.Tensor:
        return _brute_force_masked_nearest(scorer, patches, probs > scorer.tau)[1]

    expected = (masked(p_n) + masked(p_p)) / 2 if combine == "score" else masked((p_n + p_p) / 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The two rules differ on this data (else the test would not tell them apart).
    assert not torch.allclose((masked(p_n) + masked(p_p)) / 2, masked((p_n + p_p) / 2))


def _position_only_scorer(distribution_size: int) -> PniScorer:
    """A small scorer with only the P term (no MLP to train)."""
    return PniScorer(
        backbone="resnet18",
        pre_trained=False,
        coreset_ratio=0.5,
        distribution_size=distribution_size,
        window=3,
        use_neighbourhood=False,
        use_position=True,
    )


def test_border_ring_takes_inner_scores_for_n_and_p_only():
    """``border=1``: the outer ring of the N/P map is the edge padding of the inner map; plain NN is untouched."""
    scorer = _position_only_scorer(distribution_size=8)
    feats, _ = _fit_random(scorer, seed=7, shape=(3, 6, 7))
    test = feats[:2] + 0.5 * torch.randn(feats[:2].shape, generator=torch.Generator().manual_seed(8))
    scorer.border = 0
    raw = scorer.patch_scores(test)
    scorer.border = 1
    cropped = scorer.patch_scores(test)
    torch.testing.assert_close(cropped[..., 1:-1, 1:-1], raw[..., 1:-1, 1:-1])
    torch.testing.assert_close(cropped[..., 0, 1:-1], raw[..., 1, 1:-1])  # top row copies the first inner row
    torch.testing.assert_close(cropped[..., 0, 0], raw[..., 1, 1])  # corner copies the inner corner
    torch.testing.assert_close(cropped[..., -1, -1], raw[..., -2, -2])
    assert not torch.equal(cropped, raw)
    scorer.use_position = False  # plain nearest neighbour (PatchCore's score): the border stays
    patches = test.permute(0, 2, 3, 1).reshape(-1, scorer.feature_dim)
    plain = pni_torch.nearest_neighbour(patches, scorer.embedding_coreset)[0].reshape(2, 1, 6, 7)
    torch.testing.assert_close(scorer.patch_scores(test), plain)


def test_position_swap_scored_higher_by_p_than_by_plain_nn():
    """Normal features in the wrong place: P catches them, a PatchCore-style nearest neighbour cannot."""
    scorer = _position_only_scorer(distribution_size=16)
    gen = torch.Generator().manual_seed(0)
    dim = scorer.feature_dim
    left, right = torch.randn(dim, generator=gen) * 3, torch.randn(dim, generator=gen) * 3

    def images(n: int, swap: bool) -> torch.Tensor:
        feats = torch.randn(n, dim, 8, 8, generator=gen) * 0.1
        a, b = (right, left) if swap else (left, right)
        feats[..., :4] += a[None, :, None, None]
        feats[..., 4:] += b[None, :, None, None]
        return feats

    scorer.fit_memory(images(6, swap=False))
    normal, swapped = images(2, swap=False), images(2, swap=True)
    p_normal = scorer.patch_scores(normal).amax((1, 2, 3))
    p_swapped = scorer.patch_scores(swapped).amax((1, 2, 3))
    scorer.use_position = False  # plain nearest neighbour, as PatchCore
    nn_normal = scorer.patch_scores(normal).amax((1, 2, 3))
    nn_swapped = scorer.patch_scores(swapped).amax((1, 2, 3))
    assert float(nn_swapped.max()) < 2 * float(nn_normal.max())  # NN sees nothing unusual
    assert float(p_swapped.min()) > 5 * float(p_normal.max())  # P separates the swapped images
    assert float(p_swapped.min()) > 5 * float(nn_swapped.max())


def test_context_swap_scored_higher_by_n_than_by_plain_nn():
    """A normal feature in the wrong neighbourhood: the trained MLP excludes its class, plain NN cannot.

    Exercises the whole N path (MLP targets and training, temperature softmax, ``tau`` threshold, class -> embedding
    entry masking); a mask that never excludes the swapped feature's class (tau too low, flat MLP, rank/id mix-up)
    leaves the score at the plain nearest-neighbour distance and fails the test.
    """
    torch.manual_seed(0)
    scorer = PniScorer(
        backbone="resnet18",
        pre_trained=False,
        coreset_ratio=0.5,
        distribution_size=8,
        window=3,
        mlp_layers=2,
        mlp_width=32,
        mlp_channels=32,
        mlp_dropout=0.0,
        use_neighbourhood=True,
        use_position=False,
    )
    gen = torch.Generator().manual_seed(1)
    dim = scorer.feature_dim
    even, odd = torch.randn(dim, generator=gen) * 3, torch.randn(dim, generator=gen) * 3
    parity = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2  # checkerboard: context fixes the centre

    def images(n: int) -> torch.Tensor:
        base = torch.where(parity.bool()[None, None], odd[None, :, None, None], even[None, :, None, None])
        return base + torch.randn(n, dim, 8, 8, generator=gen) * 0.1

    train = images(6)
    targets = scorer.fit_memory(train)
    padded = scorer.pad_for_mlp(train)
    optimizer = torch.optim.Adam(scorer.mlp.parameters(), lr=1e-2)
    scorer.mlp.train()
    for _ in range(60):
        optimizer.zero_grad()
        scorer.mlp_loss(padded, targets, torch.arange(targets.numel())).backward()
        optimizer.step()
    scorer.eval()

    normal, swapped = images(2), images(2)
    swapped[:, :, 4, 4] = odd + torch.randn(dim, generator=gen) * 0.1  # (4, 4) is an "even" cell
    with torch.no_grad():
        probs = scorer.neighbourhood_probabilities(swapped)
        n_normal = scorer.patch_scores(normal)
        n_swapped = scorer.patch_scores(swapped)
        scorer.search = "sparse" if scorer.last_density > scorer.sparse_density else "dense"  # the other path
        torch.testing.assert_close(scorer.patch_scores(swapped), n_swapped, rtol=1e-3, atol=5e-3)  # dense: GEMM form
        scorer.use_neighbourhood = False  # plain nearest neighbour, as PatchCore
        nn_swapped = scorer.patch_scores(swapped)
    odd_class = scorer.emb_to_dist[torch.cdist(odd[None], scorer.embedding_coreset).argmin()]
    assert float(probs.reshape(2, 8, 8, -1)[:, 4, 4, odd_class].max()) < scorer.tau  # excluded by the context
    assert float(nn_swapped[:, 0, 4, 4].max()) < 2 * float(n_normal.max())  # NN sees nothing unusual
    assert float(n_swapped[:, 0, 4, 4].min()) > 5 * float(n_normal.max())  # N flags the swapped cell
    assert float(n_swapped[:, 0, 4, 4].min()) > 5 * float(nn_swapped.max())


# ---------------------------------------------------------------- model level
def test_refinement_loss_values():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1:3, 1:3] = 1
    assert float(refinement_loss(target.clone(), target)) == 0.0
    pred = torch.zeros_like(target)
    # reg = 4/16; grad_h: 4 nonzero of 12, grad_w: 4 of 12
    expected = 0.5 * 4 / 16 + 0.25 * (4 / 12 + 4 / 12)
    assert float(refinement_loss(pred, target)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes differ"):
        refinement_loss(pred, target[..., :3])


def _fit_model(model: PniModel, images: torch.Tensor) -> None:
    normalised = model.normalise_image(images)
    for scorer in model.scorers:
        scorer.fit_memory(scorer.extract(normalised))
        scorer.score_range = torch.tensor([0.5, 2.0])
    model.eval()


def test_ensemble_averages_normalised_maps_and_refine_blend():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = PniModel(
        backbones=["resnet18", "resnet10t"],
        pre_trained=False,
        coreset_ratio=0.5,
        distribution_size=8,
        window=3,
        use_neighbourhood=False,
        refine=True,
        refine_channels=[4, 8],
        refine_weight=0.25,
    )
    _fit_model(model, images)
    test = torch.rand(2, 3, 32, 32)
    out = model(test)
    members = []
    for scorer in model.scorers:
        scores = scorer.patch_scores(scorer.extract(model.normalise_image(test)))
        members.append(model.anomaly_map_generator((scores - 0.5) / 1.5, (32, 32)))
    coarse = torch.stack(members).mean(0)
    refined = model.refiner(model.normalise_image(test), coarse.clamp(0, 1))
    torch.testing.assert_close(out.anomaly_map, 0.25 * refined + 0.75 * coarse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        out.pred_score, (0.25 * refined + 0.75 * coarse).flatten(1).amax(1), rtol=1e-4, atol=1e-5
    )


def test_refine_switch_off_gives_coarse_map():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = PniModel(backbones=["resnet18"], pre_trained=False, coreset_ratio=0.5, window=3, refine=False)
    _fit_model(model, images)
    assert model.refiner is None
    out = model(images[:2])
    torch.testing.assert_close(out.anomaly_map, model.coarse_map(images[:2]))
    with pytest.raises(RuntimeError, match="refine=False"):
        model.refine_map(images[:2], out.anomaly_map)
    assert Pni(refine=False, use_neighbourhood=False, pre_trained=False, backbone="resnet18").total_epochs == 1


def test_synthetic_defects_equal_shares():
    model = Pni(**TINY)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    defective, masks = model.synthetic_defects(images)
    assert masks.shape == (8, 1, 32, 32)
    assert bool((masks.flatten(1).sum(1) > 0).all())
    changed = (defective - images).abs().amax(1, keepdim=True) > 0
    assert bool((changed <= masks.bool()).all())  # pixels change only inside the mask
    assert model._defect_counter == 8  # 8 images -> 2 per kind (round robin over 4 kinds)


def test_weights_path(tmp_path):
    source = PniScorer(backbone="resnet18", pre_trained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.feature_extractor.feature_extractor.state_dict(), path)
    loaded = PniScorer(backbone="resnet18", pre_trained=True, weights_path=str(path))
    for a, b in zip(source.feature_extractor.parameters(), loaded.feature_extractor.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        PniScorer(backbone="resnet18", pre_trained=False, weights_path=str(tmp_path / "missing.pth"))
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no tensor matching"):
        PniScorer(backbone="resnet18", pre_trained=False, weights_path=str(tmp_path / "bad.pth"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mlp_epochs": 0}, "mlp_epochs >= 1"),
        ({"refine_epochs": 0}, "refine_epochs >= 1"),
        ({"window": 4}, "odd"),
        ({"coreset_ratio": 0.0}, "coreset_ratio"),
        ({"refine_weight": 1.5}, "refine_weight"),
        ({"mlp_channels": 10_000}, "mlp_channels"),
        ({"temperature": 0.0}, "temperature"),
        ({"border": -1}, "border"),
        ({"combine": "max"}, "combine"),
        ({"backbones": ["resnet18", "resnet18"], "weights_path": "x.pth"}, "single backbone"),
        ({"refine_channels": []}, "refine_channels"),
        ({"mlp_batch_size": 1}, "mlp_batch_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Pni(**{**TINY, **kwargs})


def test_arguments_of_a_switched_off_part_warn_once():
    plain = {"backbone": "resnet18", "layers": ["layer2", "layer3"], "pre_trained": False}
    with pytest.warns(NoEffectWarning, match="refine_epochs has no effect with refine=False"):
        Pni(**plain, refine=False, refine_epochs=3)
    with pytest.warns(NoEffectWarning, match="mlp_epochs, mlp_width have no effect with use_neighbourhood=False"):
        Pni(**plain, use_neighbourhood=False, mlp_epochs=2, mlp_width=64, refine=False)
    default_channels = list(inspect.signature(Pni).parameters["refine_channels"].default)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoEffectWarning)
        Pni(**plain, refine=True, refine_epochs=3, refine_channels=[4, 8])  # the part is on
        Pni(**plain, refine=False, refine_channels=default_channels)  # a default given as a list changes nothing


def test_bad_inputs(scorer):
    model = PniModel(backbones=["resnet18"], pre_trained=False, coreset_ratio=0.5, window=3, refine=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))
    _fit_model(model, torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="training feature map"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="fit_memory expects"):
        scorer.fit_memory(torch.rand(2, 7, 4, 4))
    with pytest.raises(ValueError, match="search must be"):
        scorer.masked_nearest(torch.rand(1, scorer.feature_dim), torch.ones(1, scorer.n_dist, dtype=torch.bool), "x")


# ---------------------------------------------------------------- Engine round trip
def test_engine_fit_test_predict_checkpoint_export(tiny_mvtec_root, tmp_path, monkeypatch):
    datamodule = MVTecAD(root=tiny_mvtec_root, category="gravel", num_workers=0, train_batch_size=4, eval_batch_size=4)
    model = Pni(**TINY, pre_processor=Pni.configure_pre_processor((32, 32)))
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    assert engine.trainer.current_epoch == model.total_epochs == 3
    assert model.model.is_fitted
    assert torch.isfinite(engine.trainer.callback_metrics["train_mlp_loss_epoch"])
    assert torch.isfinite(engine.trainer.callback_metrics["train_refine_loss_epoch"])
    lo, hi = model.model.scorers[0].score_range
    assert float(hi) > float(lo)
    results = engine.test(model, datamodule=datamodule)
    assert 0.0 <= results[0]["pixel_AUROC"] <= 1.0
    predictions = engine.predict(model, datamodule=datamodule)
    assert predictions[0].anomaly_map.shape[-2:] == (32, 32)

    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        reference = model(image)
    checkpoint = tmp_path / "pni.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    restored = Pni.load_from_checkpoint(checkpoint, weights_only=True).eval()
    with torch.no_grad():
        again = restored(image)
    torch.testing.assert_close(again.anomaly_map, reference.anomaly_map)
    torch.testing.assert_close(again.pred_score, reference.pred_score)

    exported = engine.export(model, ExportType.TORCH, export_root=tmp_path)
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # our own freshly exported file
    inferencer = TorchInferencer(path=exported, device="cpu")
    prediction = inferencer.predict(image[:1])
    torch.testing.assert_close(prediction.anomaly_map.reshape(-1), reference.anomaly_map[:1].reshape(-1))


@pytest.mark.parametrize("use_neighbourhood", [True, False])
def test_post_processor_calibrates_on_the_finished_model_without_refinement(
    tiny_mvtec_root, tmp_path, use_neighbourhood
):
    """Validation at the end of the last epoch sees the complete model (memory built, score range recorded).

    Lightning validates before ``on_train_epoch_end``; without refinement the last epoch is the one that builds the
    memory or records the score range, so the post-processor used to calibrate on an unfinished model (no maps, or
    maps on another scale, which clamped the test maps to a constant).
    """
    datamodule = MVTecAD(root=tiny_mvtec_root, category="gravel", num_workers=0, train_batch_size=4, eval_batch_size=4)
    args = {**TINY, "refine": False, "use_neighbourhood": use_neighbourhood}
    model = Pni(**args, pre_processor=Pni.configure_pre_processor((32, 32)))
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    model.eval()
    with torch.no_grad():
        maps = torch.cat(
            [model.model(model.pre_processor.transform(b.image)).anomaly_map for b in datamodule.val_dataloader()]
        )
    assert torch.isfinite(model.post_processor.pixel_threshold)
    torch.testing.assert_close(model.post_processor.pixel_max, maps.max())
    torch.testing.assert_close(model.post_processor.pixel_min, maps.min())
    # Both phase-end fits ran once; a later validation (outside fitting) refits nothing.
    assert not model.fit_pending
    score_range = model.model.scorers[0].score_range.clone()
    engine.validate(model, datamodule=datamodule)
    assert not model.fit_pending
    torch.testing.assert_close(model.model.scorers[0].score_range, score_range)
