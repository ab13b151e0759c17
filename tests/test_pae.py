"""Tests of the PAE / PAEDID model (tiny images, few epochs)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import Folder, InferenceBatch
from anomalib.deploy import ExportType, TorchInferencer
from anomalib.engine import Engine
from anomalib.models.components import MemoryBankMixin
from PIL import Image
from torch.nn import functional as F

from anomalib_pixelrefine.models.image.pae import (
    Pae,
    PaeModel,
    decompose,
    decomposition_objective,
    pae_input,
    train_pae,
)
from anomalib_pixelrefine.models.image.pae.decomposition import decomposition_gradient
from anomalib_pixelrefine.models.image.pae.loss import PaeLoss
from anomalib_pixelrefine.models.image.pae.tuning import best_dice, grid_search

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- helpers


def flat_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Flat grey images with a slightly varying level and mild noise."""
    gen = torch.Generator().manual_seed(seed)
    level = 0.4 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    return (level + 0.01 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)


def plant_square(images: torch.Tensor, top: int, left: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright square defect; returns (images, masks)."""
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:])
    masks[..., top : top + side, left : left + side] = 1
    return images * (1 - masks) + 0.95 * masks, masks


def train_model(model: PaeModel, images: torch.Tensor, epochs: int, lr: float = 3e-3) -> PaeModel:
    loss_fn = PaeLoss("mse")
    optimizer = torch.optim.Adam(list(model.encoder.parameters()) + list(model.decoder.parameters()), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in images.split(8):
            reconstruction, _, mean, log_var = model(batch)
            loss = loss_fn(batch, reconstruction, mean, log_var)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    prediction, target = prediction.bool(), target.bool()
    return (2 * (prediction & target).sum() / (prediction.sum() + target.sum())).item()


# ----------------------------------------------------------------------------- torch model


@pytest.mark.parametrize("ae_type", ["cae", "vae", "aae"])
def test_shapes_of_all_autoencoder_types(ae_type):
    model = PaeModel(channels=(8, 16), latent_channels=12, ae_type=ae_type)
    x = torch.rand(2, 3, 32, 48)
    reconstruction, z, mean, log_var = model(x)
    assert reconstruction.shape == x.shape
    assert z.shape == mean.shape == (2, 12, 8, 12)
    assert (log_var is not None) == (ae_type == "vae")
    assert (model.critic is not None) == (ae_type == "aae")
    assert reconstruction.min() >= 0
    assert reconstruction.max() <= 1
    model.eval()
    model.build_memory_bank(model.encode(torch.rand(3, 3, 32, 48)))
    output = model(x)
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (2, 1, 32, 48)
    assert output.pred_score.shape == (2,)


def test_vae_samples_in_training_and_uses_the_mean_in_eval():
    model = PaeModel(channels=(8,), ae_type="vae")
    x = torch.rand(1, 3, 16, 16)
    first, second = model(x)[1], model(x)[1]
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model.reconstruct(x)[1], model.encode(x))


@pytest.mark.parametrize("reconstruction_loss", ["mse", "ssim"])
def test_reconstruction_losses_vanish_on_a_perfect_reconstruction(reconstruction_loss):
    loss = PaeLoss(reconstruction_loss)
    image = torch.rand(2, 3, 16, 16)
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(image, 1 - image).item() > 0.05
    # KL of the standard normal is zero, of a shifted one positive (VAE term).
    zeros = torch.zeros(2, 4, 3, 3)
    assert loss(image, image, zeros, zeros).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(image, image, zeros + 1, zeros).item() > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ae_type": "gan"}, "ae_type"),
        ({"alpha": 1.5}, "alpha"),
        ({"channels": ()}, "channels"),
        ({"num_neighbors": 0}, "num_neighbors"),
        ({"aggregation_length": 0}, "aggregation_length"),
    ],
)
def test_invalid_arguments_name_the_problem(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PaeModel(**kwargs)


def test_bad_inputs_raise_clear_errors():
    model = PaeModel(channels=(8, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        model.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        model.eval()(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="same"):
        decompose(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="reconstruction_loss"):
        PaeLoss("l1")
    with pytest.raises(ValueError, match="coreset_sampling_ratio"):
        Pae(coreset_sampling_ratio=0.0)
    with pytest.raises(ValueError, match="latents must have shape"):
        model.build_memory_bank(torch.rand(2, 5, 4, 4))
    with pytest.raises(ValueError, match="lam"):
        decompose(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), lam=-1.0)
    model.build_memory_bank(model.encode(torch.rand(2, 3, 32, 32)))
    with pytest.raises(ValueError, match="patch_scores"):
        model.deep_prior(torch.rand(1, 3, 32, 32), patch_scores=torch.rand(1, 2, 8, 8))
    aligned = PaeModel(channels=(8, 16), aligned=True).eval()
    aligned.build_memory_bank(aligned.encode(torch.rand(2, 3, 32, 32)))
    with pytest.raises(ValueError, match="training image size"):
        aligned(torch.rand(1, 3, 64, 64))


def test_memory_bank_contents_global_and_aligned():
    model = PaeModel(channels=(4,), latent_channels=5, aggregation_length=3)
    latents = torch.randn(3, 5, 4, 6)
    model.build_memory_bank(latents)
    raw = latents.permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(model.memory_bank_raw, raw)
    assert model.memory_bank_agg.shape == (3 * 24, 5 * 9)
    # Row of image 1 at position (2, 3): the 3x3 neighbourhood, flattened channel-major as F.unfold does.
    neighbourhood = latents[1, :, 1:4, 2:5].reshape(-1)
    torch.testing.assert_close(model.memory_bank_agg[24 + 2 * 6 + 3], F.normalize(neighbourhood, dim=0))
    torch.testing.assert_close(model.memory_bank_agg.norm(dim=1), torch.ones(72))

    model.aligned = True
    model.build_memory_bank(latents)
    assert model.memory_bank_raw.shape == (24, 3, 5)
    torch.testing.assert_close(model.memory_bank_raw[2 * 6 + 3, 1], latents[1, :, 2, 3])


def test_coreset_keeps_the_requested_fraction_of_real_rows():
    model = PaeModel(channels=(4,), latent_channels=5, aggregation_length=1)
    latents = torch.randn(4, 5, 5, 5)
    model.build_memory_bank(latents, coreset_sampling_ratio=0.2)
    assert model.memory_bank_raw.shape[0] == math.ceil(0.2 * 100)
    raw = latents.permute(0, 2, 3, 1).reshape(-1, 5)
    # Every kept row is one of the original latents, and its aggregated row is its normalised self (l = 1).
    assert (model.memory_bank_raw[:, None] - raw[None]).abs().amax(-1).min(1).values.max() < 1e-6
    torch.testing.assert_close(model.memory_bank_agg, F.normalize(model.memory_bank_raw, dim=1))


@pytest.mark.parametrize("aligned", [False, True])
def test_retrieval_of_a_training_latent_finds_itself(aligned):
    model = PaeModel(channels=(4,), latent_channels=6, aggregation_length=3, num_neighbors=1, aligned=aligned)
    latents = torch.randn(5, 6, 4, 4)
    model.build_memory_bank(latents)
    retrieved, scores = model.retrieve(latents[2:3])
    torch.testing.assert_close(retrieved, latents[2:3], atol=1e-5, rtol=1e-5)
    assert scores.shape == (1, 1, 4, 4)
    assert scores.abs().max() < 1e-5
    # A foreign latent is farther away than a known one.
    _, far = model.retrieve(torch.randn(1, 6, 4, 4))
    assert far.min() > 1e-3


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 1.0])
def test_retrieval_replaces_exactly_the_top_alpha_patches(alpha):
    z = torch.randn(2, 3, 4, 5)
    retrieved = torch.randn(2, 3, 4, 5)
    scores = torch.rand(2, 1, 4, 5)
    replaced, mask = PaeModel.replace_top_patches(z, retrieved, scores, alpha)
    count = round(alpha * 20)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [count, count]
    for i in range(2):
        top = scores[i].flatten().topk(count).indices if count else torch.empty(0, dtype=torch.long)
        assert set(torch.nonzero(mask[i].flatten()).flatten().tolist()) == set(top.tolist())
    torch.testing.assert_close(replaced, torch.where(mask, retrieved, z))


def test_deep_prior_follows_external_patch_scores():
    model = PaeModel(channels=(4, 4), latent_channels=4, alpha=1 / 16).eval()
    model.build_memory_bank(model.encode(torch.rand(4, 3, 16, 16)))
    x = torch.rand(1, 3, 16, 16)
    hot = torch.zeros(1, 1, 16, 16)
    hot[..., 9, 13] = 1.0  # full-resolution map -> latent cell (2, 3)
    prior_external = model.deep_prior(x, patch_scores=hot)
    plain = model.decode(model.encode(x))
    changed = (prior_external - plain).abs().sum(1)[0] > 1e-6
    rows, cols = torch.nonzero(changed, as_tuple=True)
    # Only the replaced cell's receptive field changes: rows/cols near 8-11 / 12-15.
    assert changed.any()
    assert rows.min() >= 8 - 4
    assert cols.min() >= 12 - 4


def test_deep_prior_searches_only_the_replaced_patches_with_the_same_result():
    """The refiner's prior (external scores) searches the bank for the top-α patches only: same prior as the full."""
    gen = torch.Generator().manual_seed(0)
    model = PaeModel(channels=(4, 8), alpha=0.2).eval()
    model.build_memory_bank(model.encode(torch.rand(6, 3, 32, 32, generator=gen)))
    x, scores = torch.rand(3, 3, 32, 32, generator=gen), torch.rand(3, 1, 32, 32, generator=gen)
    full = model.deep_prior_with_scores(x, patch_scores=scores)[0]
    torch.testing.assert_close(model.deep_prior(x, patch_scores=scores), full, rtol=0, atol=1e-6)
    assert not torch.allclose(full, model.decode(model.encode(x)))  # patches were replaced
    torch.testing.assert_close(model.deep_prior(x, patch_scores=scores, alpha=0.0), model.decode(model.encode(x)))


@pytest.mark.parametrize("noisy", [False, True])
def test_decomposition_lowers_its_objective(noisy):
    gen = torch.Generator().manual_seed(0)
    prior = torch.rand(2, 3, 24, 24, generator=gen)
    image = (prior + 0.1 * torch.randn(2, 3, 24, 24, generator=gen)).clamp(0, 1)
    image[..., 5:9, 5:9] = 1.0
    for init in ("image", "prior"):
        start = image if init == "image" else prior
        before = decomposition_objective(image, start, prior, lam=0.5, noisy=noisy)
        low_rank, sparse = decompose(image, prior, lam=0.5, steps=60, lr=0.02, noisy=noisy, init=init)
        after = decomposition_objective(image, low_rank, prior, lam=0.5, noisy=noisy)
        assert (after < before - 1e-3).all()
        if not noisy:
            torch.testing.assert_close(low_rank + sparse, image)


@pytest.mark.parametrize("noisy", [False, True])
def test_closed_form_gradient_and_adam_equal_autograd(noisy):
    gen = torch.Generator().manual_seed(1)
    prior = torch.rand(2, 3, 24, 32, generator=gen, dtype=torch.float64)
    image = (prior + 0.1 * torch.randn(2, 3, 24, 32, generator=gen, dtype=torch.float64)).clamp(0, 1)
    low_rank = (image + 0.05 * torch.randn(2, 3, 24, 32, generator=gen, dtype=torch.float64)).requires_grad_(True)
    decomposition_objective(image, low_rank, prior, 0.7, noisy, 0.8, 7).sum().backward()
    closed = decomposition_gradient(image, low_rank.detach(), prior, 0.7, noisy, 0.8, 7)
    torch.testing.assert_close(closed, low_rank.grad, rtol=1e-9, atol=1e-15)

    # The unrolled Adam equals torch.optim.Adam (ε = 1.5 / count) on the autograd objective, in float64.
    reference = image.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([reference], lr=0.05, eps=1.5 / image[0].numel())
    for _ in range(30):
        optimizer.zero_grad()
        decomposition_objective(image, reference, prior, 1.0, noisy).sum().backward()
        optimizer.step()
    low_rank, _ = decompose(image, prior, lam=1.0, steps=30, lr=0.05, noisy=noisy)
    assert low_rank.dtype == torch.float64
    torch.testing.assert_close(low_rank, reference.detach(), rtol=0, atol=1e-8)


def test_decomposition_works_inside_inference_mode():
    with torch.inference_mode():
        image, prior = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        low_rank, sparse = decompose(image, prior, steps=3)
    assert low_rank.shape == sparse.shape == image.shape


def test_planted_defect_on_flat_background_is_segmented():
    torch.manual_seed(0)
    model = PaeModel(channels=(8, 16), aggregation_length=3, num_neighbors=3, alpha=0.15, lam=0.5)
    train_model(model, flat_images(24, 32, seed=0), epochs=15)
    model.build_memory_bank(model.encode(flat_images(24, 32, seed=0)), coreset_sampling_ratio=0.5)
    images, masks = plant_square(flat_images(4, 32, seed=1), top=10, left=14, side=6)
    output = model(images)
    anomaly_map = output.anomaly_map
    prediction = anomaly_map > 0.5 * anomaly_map.amax(dim=(1, 2, 3), keepdim=True)
    assert dice(prediction, masks) > 0.8
    # Defective images score higher than normal ones.
    assert output.pred_score.min() > model(flat_images(4, 32, seed=2)).pred_score.max()


def smooth_random_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour images (bilinear upsampling of a coarse random grid)."""
    gen = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=gen), size=(size, size), mode="bilinear")


def test_grid_search_returns_the_best_combination():
    torch.manual_seed(0)
    # An AE trained on varied images generalises (reconstructs the defect too): the paper's motivation for the
    # memory bank. The bank holds flat normal images only.
    model = PaeModel(channels=(16,), latent_channels=16, decomposition_steps=30, decomposition_lr=0.02)
    train_model(model, smooth_random_images(32, 32, seed=0), epochs=40, lr=1e-2)
    train = flat_images(16, 32, seed=0)
    clean = flat_images(3, 32, seed=3)
    images, masks = plant_square(clean, top=4, left=4, side=6)
    latents = model.encode(train)
    result = grid_search(
        model, latents, images, masks, aggregation_lengths=(1, 3), num_neighbors=(1, 3), alphas=(0.0, 0.2), lams=(0.5,)
    )
    assert len(result.results) == 8
    assert result.best["score"] == max(r["score"] for r in result.results)
    # Without replacing any patch the AE reconstructs the defect; replacing patches must be preferred.
    assert result.best["alpha"] == 0.2
    assert result.best["score"] > 0.8
    assert model.alpha == 0.2
    assert model.aggregation_length == result.best["aggregation_length"]
    with_bg = grid_search(model, latents, images, masks, (3,), (3,), (0.0, 0.2), (0.5,), backgrounds=clean)
    assert with_bg.criterion == "background_l2"
    assert with_bg.best["score"] == min(r["score"] for r in with_bg.results)
    assert with_bg.best["alpha"] == 0.2
    with pytest.raises(ValueError, match="alphas"):
        grid_search(model, latents, images, masks, alphas=())
    # The PAE ablation (no decomposition) scores the residual once per (l, k, α): λ is not searched.
    model.decompose = False
    ablation = grid_search(model, latents, images, masks, (1,), (1, 3), (0.0, 0.2), (0.1, 0.5, 1.0))
    assert len(ablation.results) == 4
    assert {r["lam"] for r in ablation.results} == {0.1}
    assert ablation.best["alpha"] == 0.2


def test_best_dice_of_a_perfect_map_is_one():
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 3:7, 3:7] = 1
    assert best_dice(masks + 0.01 * torch.rand_like(masks), masks) == pytest.approx(1.0)
    assert best_dice(torch.rand_like(masks), masks) < 0.5
    # Hand-computed: scores 3 > 2 > 1 > 0 with truth 1, 0, 1, 0 -> best cut keeps the top 3: 2*2 / (3 + 2) = 0.8.
    scores = torch.tensor([3.0, 2.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    truth = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    assert best_dice(scores, truth) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="same shape"):
        best_dice(scores, truth[..., :1])


def test_train_pae_trains_the_autoencoder_and_builds_the_bank_of_the_trained_encoder():
    torch.manual_seed(0)
    images = smooth_random_images(12, 16, seed=0)
    model = PaeModel(channels=(8,), latent_channels=8)
    loss = PaeLoss("mse")
    with torch.no_grad():
        before = loss.reconstruction(images, model.eval().decode(model.encode(images)))
    train_pae(model, images, epochs=20, lr=3e-3, batch_size=4, seed=0)
    assert not model.training
    with torch.no_grad():
        after = loss.reconstruction(images, model.decode(model.encode(images)))
    assert after < 0.5 * before
    bank = model.memory_bank_agg.clone()
    model.build_memory_bank(model.encode(images))
    torch.testing.assert_close(bank, model.memory_bank_agg)
    # pae_input: the nearest stride multiple, and the size to resize back to.
    resized, size = pae_input(model, torch.rand(1, 3, 17, 30))
    assert resized.shape[-2:] == (16, 30)
    assert size == (17, 30)


# ----------------------------------------------------------------------------- anomalib integration


def _write_folder(root: Path, size: int = 32) -> Path:
    """MVTec-like folder: flat training images, normal and square-defect test images with masks."""
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/square", "ground_truth/square"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def flat() -> np.ndarray:
        level = rng.uniform(0.4, 0.6)
        return np.clip(level + 0.01 * rng.standard_normal((size, size, 3)), 0, 1)

    def save(array: np.ndarray, path: Path) -> None:
        Image.fromarray((array * 255).round().astype(np.uint8)).save(path)

    for i in range(16):
        save(flat(), root / "train/good" / f"{i:03d}.png")
    for i in range(4):
        save(flat(), root / "test/good" / f"{i:03d}.png")
        image, mask = flat(), np.zeros((size, size), np.float32)
        top, left = rng.integers(4, size - 10, 2)
        mask[top : top + 6, left : left + 6] = 1
        image[mask > 0] = 0.95
        save(image, root / "test/square" / f"{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "ground_truth/square" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def folder_datamodule(tmp_path_factory):
    root = _write_folder(tmp_path_factory.mktemp("pae_data"))
    return Folder(
        name="flat",
        root=root,
        normal_dir="train/good",
        abnormal_dir="test/square",
        normal_test_dir="test/good",
        mask_dir="ground_truth/square",
        train_batch_size=8,
        eval_batch_size=4,
        num_workers=0,
        seed=0,
    )


def _engine(tmp_path: Path, epochs: int) -> Engine:
    return Engine(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
    )


def _small_pae(**kwargs) -> Pae:
    return Pae(
        channels=(8, 16),
        learning_rate=3e-3,
        num_neighbors=3,
        alpha=0.15,
        decomposition_steps=40,
        decomposition_lr=0.02,
        pre_processor=Pae.configure_pre_processor(image_size=(32, 32)),
        visualizer=False,
        **kwargs,
    )


def test_engine_fit_test_predict_checkpoint_and_export(folder_datamodule, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = _small_pae()
    engine = _engine(tmp_path, epochs=8)
    engine.fit(model, datamodule=folder_datamodule)
    assert model.model.is_fitted
    assert torch.isfinite(engine.trainer.callback_metrics["val_loss"])  # reconstruction loss on the validation set
    # Coreset of 10 % of 16 images x 64 latent positions.
    assert model.model.memory_bank_raw.shape == (math.ceil(0.1 * 16 * 64), 16)
    assert model.post_processor.pixel_threshold.isfinite()
    results = engine.test(model, datamodule=folder_datamodule)
    assert results[0]["pixel_AUROC"] > 0.9
    assert results[0]["image_AUROC"] > 0.9

    checkpoint = (
        engine.trainer.checkpoint_callback.best_model_path or engine.trainer.checkpoint_callback.last_model_path
    )
    assert Path(checkpoint).is_file()
    reloaded = Pae.load_from_checkpoint(checkpoint)  # anomalib 2.7 loads with weights_only=True
    torch.testing.assert_close(reloaded.model.memory_bank_agg, model.model.memory_bank_agg)
    batch = next(iter(folder_datamodule.test_dataloader()))
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected, actual = model(batch.image), reloaded(batch.image)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)

    predictions = engine.predict(model, datamodule=folder_datamodule)
    assert predictions[0].pred_mask.shape[-2:] == (32, 32)

    exported = engine.export(model, ExportType.TORCH, export_root=tmp_path)
    loaded = torch.load(exported, weights_only=False)["model"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.image).anomaly_map, expected.anomaly_map)
    # anomalib's TorchInferencer on an image file gives the model's map for that image.
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # our own export: anomalib refuses to unpickle without it
    inferencer = TorchInferencer(path=exported, device="cpu")
    prediction = inferencer.predict(batch.image_path[0])
    assert prediction.anomaly_map.shape[-2:] == (32, 32)
    torch.testing.assert_close(prediction.anomaly_map.reshape(32, 32), expected.anomaly_map[0].reshape(32, 32))


def test_memory_bank_is_built_with_the_last_epoch_weights(folder_datamodule, tmp_path):
    """``MemoryBankMixin`` restricted to the last epoch: the bank is the final encoder's, fitted once."""
    torch.manual_seed(0)
    model = _small_pae(coreset_sampling_ratio=None)
    assert isinstance(model, MemoryBankMixin)
    engine = _engine(tmp_path, epochs=2)
    engine.fit(model, datamodule=folder_datamodule)
    assert model._is_fitted
    bank = model.model.memory_bank_raw.flatten().sort().values
    model.fit()  # rebuilt from the final weights: the same latents (the loader shuffles their order)
    torch.testing.assert_close(model.model.memory_bank_raw.flatten().sort().values, bank)

    # A checkpoint written before Pae used the mixin (no ``_is_fitted``) loads as fitted.
    checkpoint = tmp_path / "old.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=False)
    del state["state_dict"]["_is_fitted"]
    torch.save(state, checkpoint)
    reloaded = Pae.load_from_checkpoint(checkpoint)
    assert reloaded._is_fitted
    batch = next(iter(folder_datamodule.test_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(batch.image).anomaly_map, model.eval()(batch.image).anomaly_map)


@pytest.mark.parametrize("ae_type", ["vae", "aae"])
def test_engine_trains_vae_and_aae(folder_datamodule, tmp_path, ae_type):
    torch.manual_seed(0)
    model = _small_pae(ae_type=ae_type, decompose=False)
    critic_before = None if ae_type != "aae" else [p.clone() for p in model.model.critic.parameters()]
    encoder_before = [p.clone() for p in model.model.encoder.parameters()]
    engine = _engine(tmp_path, epochs=2)
    engine.fit(model, datamodule=folder_datamodule)
    assert model.model.is_fitted
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, model.model.encoder.parameters(), strict=True))
    if critic_before is not None:
        params = list(model.model.critic.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(critic_before, params, strict=True))
        assert max(p.abs().max().item() for p in params) <= model.critic_clip + 1e-7
    results = engine.test(model, datamodule=folder_datamodule)
    assert 0.0 <= results[0]["pixel_AUROC"] <= 1.0


def test_split_uses_the_model_settings_or_the_plain_residual():
    torch.manual_seed(0)
    model = PaeModel(channels=(4,), decomposition_steps=15, decomposition_lr=0.05, noisy=True, lam=0.2, lam_ssim=0.5)
    images, prior = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    low_rank, sparse = model.split(images, prior)
    expected = decompose(images, prior, lam=0.2, steps=15, lr=0.05, noisy=True, lam_ssim=0.5)
    assert torch.allclose(low_rank, expected[0])
    assert torch.allclose(sparse, expected[1])
    # λ override (tuning): a larger λ soft-thresholds more of the residual away.
    assert (model.split(images, prior, lam=0.8)[1] == 0).sum() > (sparse == 0).sum()
    model.decompose = False
    low_rank, sparse = model.split(images, prior)
    assert torch.equal(low_rank, prior)
    assert torch.equal(sparse, images - prior)
