"""FastMEBinPostProcessor: the registry's ``mebin``, bit-identical to anomalib's MEBinPostProcessor on real maps."""

from types import SimpleNamespace

import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.engine import Engine
from anomalib.models import Padim
from anomalib.post_processing import MEBinPostProcessor
from anomalib.post_processing.mebin import mebin_binarize
from kornia.contrib import connected_components

from anomalib_pixelrefine import registry
from anomalib_pixelrefine.data import default_datamodule
from anomalib_pixelrefine.post_processing import FastMEBinPostProcessor
from anomalib_pixelrefine.post_processing.mebin import count_components, fast_mebin_binarize
from anomalib_pixelrefine.weights import ensure_offline_weights

pytestmark = pytest.mark.usefixtures("single_thread")


def _kornia_count(binary: torch.Tensor) -> list[int]:
    labels = connected_components(binary, num_iterations=1000)
    return [int((plane.unique() > 0).sum()) for plane in labels]


def test_registry_mebin_is_the_fast_subclass():
    cls = registry.post_processor_class("mebin")
    assert cls is FastMEBinPostProcessor
    assert issubclass(cls, MEBinPostProcessor)
    post = cls()  # anomalib's defaults
    assert (post.sample_rate, post.min_interval_len, post.erode, post.kernel_size) == (4, 4, True, 6)


def test_count_equals_kornia_also_where_1000_steps_do_not_converge():
    generator = torch.Generator().manual_seed(0)
    random = (torch.rand(6, 1, 24, 24, generator=generator) > torch.linspace(0.2, 0.9, 6).view(-1, 1, 1, 1)).float()
    # A serpentine of ~1180 pixels: one component, but kornia's 1000 pooling steps leave it with many labels.
    snake = torch.zeros(1, 1, 48, 48)
    snake[0, 0, ::2, :] = 1
    for row in range(1, 48, 2):
        snake[0, 0, row, 47 if (row // 2) % 2 == 0 else 0] = 1
    assert count_components(random).tolist() == _kornia_count(random)
    kornia_snake = _kornia_count(snake)
    assert kornia_snake[0] > 1  # not converged in kornia: the fast count must reproduce that, not the true count 1
    assert count_components(snake).tolist() == kornia_snake
    assert count_components(torch.zeros(2, 1, 8, 8)).tolist() == [0, 0]


@pytest.fixture(scope="module")
def padim_maps(tiny_mvtec_path, tmp_path_factory):
    """Raw anomaly maps and scores of a fitted pretrained PaDiM (lite0, 32 px) and its fitted post-processor state."""
    if not ensure_offline_weights("tf_efficientnet_lite0"):
        pytest.skip("offline lite0 weights not installed")
    model = Padim(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.1", "blocks.2"],
        n_features=20,
        pre_processor=Padim.configure_pre_processor(image_size=(32, 32)),
        visualizer=False,
    )
    datamodule = default_datamodule(tiny_mvtec_path, seed=0)
    engine = Engine(
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=tmp_path_factory.mktemp("mebin"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    datamodule.setup("test")
    images = torch.stack([datamodule.test_data[i].image for i in range(len(datamodule.test_data))])
    model.eval()
    with torch.no_grad():
        raw = model.model(model.pre_processor(images))
    return raw.pred_score, raw.anomaly_map, model.post_processor.state_dict()


def test_fast_binarize_equals_anomalib_on_real_maps(padim_maps):
    _, maps, _ = padim_maps
    for batch in (maps, maps[:1], maps[2:5]):  # the batch sets the sweep's range; one image: the global-min fallback
        fast_masks, fast_thresholds = fast_mebin_binarize(batch)
        masks, thresholds = mebin_binarize(batch)
        assert torch.equal(fast_masks, masks)
        assert torch.equal(fast_thresholds, thresholds)


def test_fast_post_processor_equals_anomalib_on_real_maps(padim_maps):
    scores, maps, state = padim_maps
    shipped, fast = MEBinPostProcessor(), FastMEBinPostProcessor()
    shipped.load_state_dict(state)
    fast.load_state_dict(state)
    out_shipped = shipped(InferenceBatch(pred_score=scores, anomaly_map=maps))
    out_fast = fast(InferenceBatch(pred_score=scores, anomaly_map=maps))
    for field in ("pred_mask", "pred_label", "pred_score", "anomaly_map"):
        assert torch.equal(getattr(out_fast, field), getattr(out_shipped, field)), field
    assert out_fast.pred_mask.any()  # a real comparison: some pixels are masked
    # The test/predict path (in place on a batch), 3-D maps as anomalib's Batch may hold them.
    batches = []
    for post in (shipped, fast):
        batch = SimpleNamespace(pred_score=scores.clone(), anomaly_map=maps[:, 0].clone(), pred_label=None)
        batch.pred_mask = None
        post.post_process_batch(batch)
        batches.append(batch)
    assert torch.equal(batches[0].pred_mask, batches[1].pred_mask)
    assert torch.equal(batches[0].pred_label, batches[1].pred_label)
