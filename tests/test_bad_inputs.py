"""Bad input never loses data, never passes silently as NaN, and fails with a one-line error naming the problem.

One test (or a few) per item of issue 18; tiny data (16-64 px, a handful of images, random backbone weights).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_pixelrefine.data import (
    FolderNotOwnedError,
    InvalidDatasetError,
    build_default_benchmark,
    validate_mvtec_folder,
    write_mvtec_folder,
)

TINY = {"categories": ["brick"], "image_size": 32, "n_train": 3, "n_test_good": 1, "n_test_defect": 1}


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


# -------------------------------------------------------------------------------------------- 1. no data loss
def test_existing_user_folder_is_never_deleted(tmp_path: Path) -> None:
    user_file = tmp_path / "brick" / "notes.txt"
    user_file.parent.mkdir()
    user_file.write_text("mine")
    with pytest.raises(FolderNotOwnedError, match="not created by anomalib-pixelrefine") as info:
        build_default_benchmark(tmp_path, **TINY)
    assert str(tmp_path / "brick") in _one_line(info.value)
    assert user_file.read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "brick").iterdir()) == ["notes.txt"]


def test_rebuild_of_our_folder_keeps_foreign_files_and_deletes_only_ours(tmp_path: Path) -> None:
    path = build_default_benchmark(tmp_path, **TINY)["brick"]
    user_file = path / "train" / "good" / "my_extra.png"
    user_file.write_bytes((path / "train" / "good" / "000.png").read_bytes())
    # Parameters changed: the folder would be rebuilt, but it now holds a file we did not write.
    with pytest.raises(FolderNotOwnedError, match="did not write") as info:
        build_default_benchmark(tmp_path, **{**TINY, "n_train": 2})
    assert str(user_file) in _one_line(info.value)
    assert user_file.is_file()
    assert (path / "train" / "good" / "002.png").is_file()  # nothing deleted
    user_file.unlink()
    build_default_benchmark(tmp_path, **{**TINY, "n_train": 2})  # only ours left: rebuilt, stale files removed
    assert sorted(p.name for p in (path / "train" / "good").iterdir()) == ["000.png", "001.png"]


def test_old_style_manifest_alone_never_makes_a_user_folder_ours(tmp_path: Path) -> None:
    # A user's MVTec-layout folder holding a manifest.json in the format this package wrote before its marker.
    path = tmp_path / "brick"
    user_files = {
        "manifest.json": b'{"category": "brick", "version": 2}',
        "train/good/000.png": b"user image",
        "test/crack/000.png": b"user defect",
        "ground_truth/crack/000_mask.png": b"user mask",
    }
    for name, data in user_files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    with pytest.raises(FolderNotOwnedError, match="not created by anomalib-pixelrefine") as info:
        build_default_benchmark(tmp_path, **TINY)
    _one_line(info.value)
    assert {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()} == user_files


def test_our_file_changed_by_the_user_is_never_deleted(tmp_path: Path) -> None:
    path = build_default_benchmark(tmp_path, **TINY)["brick"]
    edited = path / "train" / "good" / "000.png"
    edited.write_bytes((path / "train" / "good" / "001.png").read_bytes())  # the user's own image, our file name
    with pytest.raises(FolderNotOwnedError, match="was changed after") as info:
        build_default_benchmark(tmp_path, **{**TINY, "n_train": 2})
    assert str(edited) in _one_line(info.value)
    assert edited.read_bytes() == (path / "train" / "good" / "001.png").read_bytes()
    assert (path / "train" / "good" / "002.png").is_file()  # nothing deleted


def test_write_mvtec_folder_refuses_without_overwrite(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 16, 16)
    path = write_mvtec_folder(tmp_path, "a", images, images, {})
    with pytest.raises(FolderNotOwnedError, match="overwrite=False"):
        write_mvtec_folder(tmp_path, "a", images, images, {}, overwrite=False)
    assert validate_mvtec_folder(path) == {"train/good": 2, "test/good": 2}


# -------------------------------------------------------------------------------------------- 5. truncated image
def test_truncated_png_is_named_by_the_validator(tmp_path: Path) -> None:
    path = build_default_benchmark(tmp_path, **TINY)["brick"]
    bad = path / "train" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header (and size) is intact, the pixel data is cut
    with pytest.raises(InvalidDatasetError, match="truncated") as info:
        validate_mvtec_folder(path)
    assert f"Cannot read image {bad}" in _one_line(info.value)


# ------------------------------------------------------------------------------------- 10. undefined metrics
def test_good_only_test_set_reports_nan_metrics_with_a_reason(tmp_path: Path) -> None:
    from anomalib.engine import Engine

    from anomalib_pixelrefine.data import default_datamodule
    from anomalib_pixelrefine.demo import build_demo_model, format_table
    from anomalib_pixelrefine.metrics import UndefinedMetricWarning

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    path = write_mvtec_folder(tmp_path / "data", "plain", images[:4], images[4:], {})  # test/good only
    datamodule = default_datamodule(path, train_batch_size=4, eval_batch_size=2)
    model = build_demo_model("Padim", image_size=32)
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    with pytest.warns(UndefinedMetricWarning) as records:
        results = engine.test(model=model, datamodule=datamodule)[0]
    undefined = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_SPRO", "pixel_Dice", "pixel_IoU", "pixel_BestDice")
    for name in (*undefined, "pixel_BestIoU"):
        assert results[name] != results[name], f"{name} = {results[name]} (expected NaN)"
    messages = [str(record.message) for record in records if record.category is UndefinedMetricWarning]
    assert any("image_AUROC is undefined" in m and "no anomalous sample" in m for m in messages)
    assert any("pixel_Dice is undefined" in m and "no defect pixel" in m for m in messages)
    assert all("\n" not in m for m in messages)
    assert "| nan |" in format_table({"plain": {"pixel_Dice": results["pixel_Dice"]}})


# ------------------------------------------------------------------- 3. parameters and non-finite inputs
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("class_path", "kwargs"),
    [
        ("anomalib_pixelrefine.post_processing.F2PAD", {"lr": -0.01}),
        ("anomalib_pixelrefine.post_processing.F2PAD", {"lr": NAN}),
        ("anomalib_pixelrefine.post_processing.F2PAD", {"num_candidates": 0}),
        ("anomalib_pixelrefine.post_processing.F2PAD", {"roi_dilation": -1}),
        ("anomalib_pixelrefine.post_processing.F2PAD", {"clip": -0.03}),
        ("anomalib_pixelrefine.post_processing.F2PAD", {"opening_size": -1}),  # RefiningPostProcessor's
        ("anomalib_pixelrefine.post_processing.F2PAD", {"mask_threshold": NAN}),  # RefiningPostProcessor's
        ("anomalib_pixelrefine.post_processing.PaedidRefiner", {"steps": -5}),
        ("anomalib_pixelrefine.post_processing.PaedidRefiner", {"lr": INF}),
        ("anomalib_pixelrefine.post_processing.PaedidRefiner", {"max_train_images": 0}),
        ("anomalib_pixelrefine.models.Pae", {"decomposition_lr": -0.05}),
        ("anomalib_pixelrefine.models.Pae", {"seed": -1}),
        ("anomalib_pixelrefine.models.Pni", {"mlp_lr": NAN}),
        ("anomalib_pixelrefine.models.Pni", {"mlp_dropout": 1.0}),
        ("anomalib_pixelrefine.models.FeatureEnsemble", {"noise_std": -0.1}),
        ("anomalib_pixelrefine.models.FeatureEnsemble", {"lr": INF}),
    ],
)
def test_invalid_parameters_raise_one_line_errors_naming_parameter_and_value(class_path: str, kwargs: dict) -> None:
    import importlib

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    base = {"backbone": "resnet18", "pre_trained": False} if name == "Pni" else {}
    ((parameter, value),) = kwargs.items()
    with pytest.raises(ValueError, match=f"{name}: {parameter} must be ") as info:
        cls(**base, **kwargs)
    assert _one_line(info.value).endswith(f"got {value!r}.")


def _fitted_f2pad_and_host(size: int = 32) -> tuple:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from anomalib_pixelrefine.post_processing import F2PAD

    generator = torch.Generator().manual_seed(0)
    train = torch.rand(4, 3, size, size, generator=generator)
    host = PatchcoreModel(layers=["layer1", "layer2"], backbone="resnet18", pre_trained=False)
    host.train()
    host(train)
    host.memory_bank = torch.vstack(host.embedding_store)
    host.embedding_store.clear()
    refiner = F2PAD(max_iters=2, optimisation={"num_candidates": 4}, initial_threshold=0.5)
    refiner.fit_prior(train)
    refiner.prior_fitted.fill_(True)
    return refiner, host.eval(), torch.rand(2, 3, size, size, generator=generator)


def test_non_finite_host_map_or_image_raises_instead_of_nan_maps() -> None:
    refiner, host, images = _fitted_f2pad_and_host()
    host_maps = torch.zeros(2, 1, 32, 32)
    host_maps[..., 8:16, 8:16] = 1.0
    assert torch.isfinite(refiner.refine_batch(images, host_maps, host)).all()  # finite input: finite maps
    host_maps[1, 0, 3, 3] = NAN
    with pytest.raises(ValueError, match=r"F2PAD: the host anomaly map holds 1 non-finite value\(s\) \(NaN\)") as info:
        refiner.refine_batch(images, host_maps, host)
    assert _one_line(info.value).endswith("batch item(s) 1.")
    images[0, :, 0, 0] = NAN
    with pytest.raises(ValueError, match=r"F2PAD: the input image holds 3 non-finite value\(s\) \(NaN\) in batch"):
        refiner.refine_batch(images, host_maps.nan_to_num(), host)


@pytest.mark.parametrize("name", ["Pae", "Pni", "FeatureEnsemble"])
def test_our_models_refuse_non_finite_images_in_every_stage(name: str) -> None:
    from anomalib.data import ImageBatch

    import anomalib_pixelrefine.models as models

    kwargs = {"backbone": "resnet18", "pre_trained": False} if name == "Pni" else {}
    if name == "FeatureEnsemble":
        kwargs = {"members": [{"backbone": "resnet18", "layers": ["layer2"], "pre_trained": False}]}
    model = getattr(models, name)(**kwargs)
    image = torch.rand(2, 3, 32, 32)
    model.on_test_batch_start(ImageBatch(image=image), 0)  # finite: accepted
    image[1, 0, 5, 5] = INF
    batch = ImageBatch(image=image)
    for hook in (model.on_train_batch_start, model.on_test_batch_start, model.on_predict_batch_start):
        with pytest.raises(ValueError, match=rf"{name}: the input image holds 1 non-finite value\(s\) \(inf\)"):
            hook(batch, 0)


# ------------------------------------------------------------------------------------ 7. too small images
def test_pni_refuses_images_too_small_for_its_perlin_defects(tmp_path: Path) -> None:
    from anomalib.engine import Engine

    from anomalib_pixelrefine.data import PerlinDefect, default_datamodule
    from anomalib_pixelrefine.models import Pni

    tiny = {"backbone": "resnet18", "pre_trained": False, "mlp_epochs": 1, "refine": True, "refine_epochs": 1}
    tiny |= {"window": 3}
    tiny |= {"distribution_size": 16, "mlp_layers": 2, "mlp_width": 16, "mlp_channels": 8, "mlp_batch_size": 32}
    with pytest.raises(ValueError, match="image too small") as info:
        Pni(**tiny, pre_processor=Pni.configure_pre_processor((16, 16)))
    assert "16x16 px, needs at least 17 px per side" in _one_line(info.value)
    Pni(**tiny, pre_processor=Pni.configure_pre_processor((17, 17)))  # the measured minimum is accepted
    # Without refinement the limit is the coarse map's smoothing: 17 px for sigma=4, 5 px for sigma=1.
    with pytest.raises(ValueError, match="needs at least 17 px"):
        Pni(**{**tiny, "refine": False}, pre_processor=Pni.configure_pre_processor((16, 16)))
    Pni(**{**tiny, "refine": False, "sigma": 1.0}, pre_processor=Pni.configure_pre_processor((16, 16)))
    # Data already at 16 px with a pre-processor that does not resize: refused at the first training batch.
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 16, 16, generator=generator)
    path = write_mvtec_folder(tmp_path / "data", "small", images[:4], images[4:], {})
    model = Pni(**tiny, pre_processor=False)
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    with pytest.raises(ValueError, match=r"Pni: image too small for .* and the refinement's Perlin defects: 16x16"):
        engine.fit(model, datamodule=default_datamodule(path, train_batch_size=4, eval_batch_size=2))
    assert model._filled == 0  # refused before any feature was collected
    with pytest.raises(ValueError, match="PerlinDefect: image too small"):
        PerlinDefect(seed=0)(images[:1])


# ------------------------------------------------------------------------------------------- 8. seeds
def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) or sa[k].isnan().all() for k in sa)


@pytest.mark.parametrize("name", ["Pae", "Pni"])
def test_same_seed_gives_the_same_model_whatever_the_global_random_state(name: str) -> None:
    import anomalib_pixelrefine.models as models

    kwargs = {"backbone": "resnet18", "pre_trained": False} if name == "Pni" else {"channels": (8, 16)}
    torch.manual_seed(1)
    first = getattr(models, name)(seed=0, **kwargs)
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    second = getattr(models, name)(seed=0, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is left untouched
    assert _same_state(first, second)
    assert not _same_state(first, getattr(models, name)(seed=1, **kwargs))


def test_pni_same_seed_same_scores_after_fit(tmp_path: Path) -> None:
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_pixelrefine.data import default_datamodule
    from anomalib_pixelrefine.models import Pni

    path = build_default_benchmark(tmp_path / "data", **{**TINY, "n_train": 4, "n_test_good": 2})["brick"]
    tiny = {"backbone": "resnet18", "pre_trained": False, "mlp_epochs": 1, "refine": False, "window": 3}
    tiny |= {"distribution_size": 16, "mlp_layers": 2, "mlp_width": 16, "mlp_channels": 8, "mlp_batch_size": 32}
    scores = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # a different global state when the model is built
        model = Pni(**tiny, seed=0, pre_processor=Pni.configure_pre_processor((32, 32)), evaluator=False)
        seed_everything(0)  # the training itself is seeded the same way
        engine = Engine(default_root_dir=tmp_path / f"r{global_seed}", accelerator="cpu", devices=1, logger=False)
        datamodule = default_datamodule(path, train_batch_size=4, eval_batch_size=8)
        engine.fit(model, datamodule=datamodule)
        scores.append(torch.cat([b.pred_score for b in engine.predict(model, datamodule=datamodule)]))
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ 9. peak memory
_CHILD = "import os; print(os.environ.get('MALLOC_ARENA_MAX'), os.environ.get('MALLOC_MMAP_THRESHOLD_'))"


def _clean_env(**extra: str) -> dict[str, str]:
    import os

    keep = {k: v for k, v in os.environ.items() if k not in {"MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"}}
    keep.pop("PIXELREFINE_KEEP_MALLOC", None)
    return keep | extra


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="glibc allocator settings")
def test_pixelrefine_command_sets_the_allocator_for_itself_and_its_children() -> None:
    import subprocess
    import sys

    script = (
        "import subprocess, sys\n"
        "from anomalib_pixelrefine import cli\n"
        "sys.argv = ['pixelrefine', 'fit', '--post_processor']  # fails fast, after the allocator set-up\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        f"print('child', subprocess.run([sys.executable, '-c', {_CHILD!r}], capture_output=True, text=True).stdout)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_clean_env(), check=True)
    assert "child 2 1048576" in out.stdout
    # The user's own setting wins, and nothing else is added.
    script = f"from anomalib_pixelrefine.allocator import configure_allocator\nprint(configure_allocator())\n{_CHILD}"
    env = _clean_env(MALLOC_ARENA_MAX="4")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "4", "None"]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_clean_env(), check=True)
    assert out.stdout.split() == ["True", "2", "1048576"]  # mallopt accepted both settings in the running process


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="glibc allocator settings")
def test_plain_import_sets_the_allocator_unless_the_user_chose() -> None:
    import subprocess
    import sys

    # configure_allocator() is idempotent: True = this process runs with the settings (applied at import).
    script = "import anomalib_pixelrefine\nfrom anomalib_pixelrefine.allocator import configure_allocator\n"
    script += f"print(configure_allocator())\n{_CHILD}"
    for env, expected in [
        (_clean_env(), ["True", "2", "1048576"]),
        (_clean_env(PIXELREFINE_KEEP_MALLOC="1"), ["False", "None", "None"]),
        (_clean_env(MALLOC_MMAP_THRESHOLD_="65536"), ["False", "None", "65536"]),
    ]:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.split() == expected


def test_demo_command_refuses_a_user_folder_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    user_file = tmp_path / "brick" / "mine.png"
    user_file.parent.mkdir()
    user_file.write_bytes(b"user data")
    script = "from anomalib_pixelrefine.cli import main; main()"
    args = ["demo", "--root", str(tmp_path), "--categories", "[brick]", "--image_size", "32"]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=_clean_env())
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pixelrefine: error: Refusing to write into {tmp_path / 'brick'}")
    assert "Traceback" not in out.stderr
    assert user_file.read_bytes() == b"user data"


# ------------------------------------------------------------------- issue 29, items 3-4: image formats and depths
def _tiny_folder(root: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 32, 32, generator=generator)
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:16, 8:16] = 1
    return write_mvtec_folder(root, "cat", images[:8], images[8:10], {"bad": (images[10:], masks)})


def _convert(files: list[Path], suffix: str) -> list[Path]:
    from PIL import Image

    converted = []
    for file in files:
        with Image.open(file) as image:
            image.convert("RGB").save(file.with_suffix(suffix))
        file.unlink()
        converted.append(file.with_suffix(suffix))
    return converted


@pytest.mark.parametrize(("suffix", "share"), [(".jpg", 4), (".JPG", 4), (".jpeg", 8), (".bmp", 4), (".tiff", 8)])
def test_jpeg_bmp_tiff_training_images_are_loaded_like_png(tmp_path: Path, suffix: str, share: int) -> None:
    from anomalib_pixelrefine.data import default_datamodule

    path = _tiny_folder(tmp_path)
    converted = _convert(sorted((path / "train" / "good").iterdir())[-share:], suffix)
    converted += _convert([path / "test" / "bad" / "001.png"], suffix)  # its mask stays a PNG
    assert validate_mvtec_folder(path)["train/good"] == 8
    datamodule = default_datamodule(path, train_batch_size=4, eval_batch_size=2, seed=0)
    datamodule.setup()
    train = list(datamodule.train_data.samples.image_path)
    held_back = [p for p in datamodule.val_data.samples.image_path if "/train/good/" in p]
    assert len(train) + len(held_back) == 8  # none dropped
    loaded = set(train) | set(held_back) | set(datamodule.test_data.samples.image_path)
    assert {str(p) for p in converted} <= loaded
    test = datamodule.test_data.samples
    assert test[test.image_path.str.endswith(f"001{suffix}")].mask_path.iloc[0].endswith("001_mask.png")
    sample = datamodule.train_data[0]
    assert sample.image.shape == (3, 32, 32)


def test_16_bit_images_are_refused_by_name_and_16_bit_masks_accepted(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    path = _tiny_folder(tmp_path)
    mask = path / "ground_truth" / "bad" / "000_mask.png"
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint16) * 65535).save(mask)
    assert Image.open(mask).mode == "I;16"
    validate_mvtec_folder(path)  # masks are read as "> 0": any depth is exact
    image = path / "train" / "good" / "003.png"
    deep = (np.asarray(Image.open(image).convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(image)
    with pytest.raises(InvalidDatasetError, match="16-bit pixels") as info:
        validate_mvtec_folder(path)
    assert str(image) in _one_line(info.value)


def test_demo_refuses_a_results_dir_holding_a_users_results_ahead_of_any_work(tmp_path: Path) -> None:
    import subprocess
    import sys

    from anomalib_pixelrefine.benchmark.pipeline import OutputDirError
    from anomalib_pixelrefine.demo import run_demo

    user_file = tmp_path / "results" / "results.csv"
    user_file.parent.mkdir()
    user_file.write_text("my numbers")
    with pytest.raises(OutputDirError, match="did not write") as info:
        run_demo(root=str(tmp_path / "data"), results_dir=str(user_file.parent), categories=["brick"])
    assert str(user_file) in _one_line(info.value)
    assert not (tmp_path / "data").exists()  # refused before the data were built
    script = "from anomalib_pixelrefine.cli import main; main()"
    args = ["demo", "--root", str(tmp_path / "data"), "--results_dir", str(user_file.parent), "--model", "Padim"]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=_clean_env())
    assert out.returncode == 1
    assert (
        out.stderr.strip().splitlines()[-1].startswith(f"pixelrefine: error: Refusing to write into {user_file.parent}")
    )
    assert "Traceback" not in out.stderr
    assert user_file.read_text() == "my numbers"


# ------------------------------------------------------------------- issue 29, item 9: refusals at once, in one line
def test_graph_export_of_a_refining_host_is_refused_ahead_of_tracing(tmp_path: Path) -> None:
    import subprocess
    import sys

    from anomalib.models import Padim
    from anomalib.post_processing import PostProcessor

    from anomalib_pixelrefine import F2PAD
    from anomalib_pixelrefine.post_processing.base import EXPORT_MESSAGE, ExportRefusedError

    model = Padim(backbone="resnet18", pre_trained=False, post_processor=F2PAD())
    for method in ("to_onnx", "to_openvino"):
        with pytest.raises(ExportRefusedError) as info:
            getattr(model, method)(tmp_path / method)
        assert _one_line(info.value) == EXPORT_MESSAGE.format(name="F2PAD")
        assert not (tmp_path / method).exists()  # refused before anything was written or traced
    model.post_processor = PostProcessor()  # the host alone passes the guard (and reaches anomalib's export)
    with pytest.raises(RuntimeError) as info:
        model.to_onnx(tmp_path / "host", input_size=(32, 32))  # unfitted PaDiM: anomalib's own error
    assert not isinstance(info.value, ExportRefusedError)
    script = "from anomalib_pixelrefine.cli import main; main()"
    args = ["export", "--model", "Padim", "--model.backbone", "resnet18", "--model.pre_trained", "false"]
    args += ["--post_processor", "f2pad", "--export_type", "openvino", "--export_root", str(tmp_path / "cli")]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=_clean_env())
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "pixelrefine: error: " + EXPORT_MESSAGE.format(name="F2PAD")
    assert "Traceback" not in out.stderr


def test_f2pad_optimising_through_a_host_without_scorer_is_refused_at_construction() -> None:
    from anomalib.models import Fastflow

    from anomalib_pixelrefine import F2PAD
    from anomalib_pixelrefine.post_processing.scorers import NoScorerError

    with pytest.raises(NoScorerError, match=r"No differentiable F2PAD scorer .* 'FastflowModel'") as info:
        Fastflow(backbone="resnet18", pre_trained=False, post_processor=F2PAD(max_iters=5))
    assert "max_iters=0" in _one_line(info.value)
    Fastflow(backbone="resnet18", pre_trained=False, post_processor=F2PAD())  # max_iters=0 needs no scorer


@pytest.mark.parametrize(
    ("name", "value"), [("num_exemplars", 10**9), ("num_candidates", 10**9), ("prior_pixels", 10**12), ("ks", 10**6)]
)
def test_absurd_f2pad_sizes_are_refused_at_construction(name: str, value: int) -> None:
    from anomalib_pixelrefine import F2PAD
    from anomalib_pixelrefine.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=f"F2PAD: {name} must be <= .* got {value}") as info:
        F2PAD(**{name: value})
    _one_line(info.value)


def test_non_ascii_data_paths_are_refused_ahead_of_any_write(tmp_path: Path) -> None:
    # anomalib's data loaders refuse every sample path outside printable ASCII (validate_path), after the fit.
    root = tmp_path / "données"
    with pytest.raises(InvalidDatasetError, match="printable ASCII") as info:
        build_default_benchmark(root, **TINY)
    assert "'é'" in _one_line(info.value)
    assert not root.exists()
    path = build_default_benchmark(tmp_path / "data", **TINY)["brick"]
    defect = path / "test" / "crack"
    defect.rename(path / "test" / "fissure_ü")
    (path / "ground_truth" / "crack").rename(path / "ground_truth" / "fissure_ü")
    with pytest.raises(InvalidDatasetError, match="printable ASCII") as info:
        validate_mvtec_folder(path)
    assert "fissure_ü" in _one_line(info.value)


def test_folder_of_an_earlier_version_is_reused_but_never_deleted(tmp_path: Path) -> None:
    import json

    path = build_default_benchmark(tmp_path, **TINY)["brick"]
    marker = path / ".pixelrefine_files.json"
    names = sorted(json.loads(marker.read_text())["files"])
    marker.write_text(json.dumps({"written_by": "anomalib-pixelrefine", "files": names}))  # names only, no hashes
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert build_default_benchmark(tmp_path, **TINY)["brick"] == path  # same parameters: reused (read only)
    with pytest.raises(FolderNotOwnedError, match="earlier anomalib-pixelrefine version") as info:
        build_default_benchmark(tmp_path, **{**TINY, "n_train": 2})
    _one_line(info.value)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
