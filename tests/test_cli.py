"""Tests of the ``pixelrefine`` command line interface."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_pixelrefine.cli import POST_PROCESSORS, translate_post_processor_args

REPO = Path(__file__).resolve().parents[1]


def test_post_processor_alias_is_moved_after_the_model():
    args = ["train", "--post_processor", "f2pad", "--model", "Patchcore", "--post_processor.max_iterations=5"]
    assert translate_post_processor_args(args) == [
        "train",
        "--model",
        "Patchcore",
        "--model.post_processor",
        POST_PROCESSORS["f2pad"],
        "--model.post_processor.init_args.max_iterations",
        "5",
    ]


def test_post_processor_alias_accepts_class_paths_and_equals_form():
    args = ["test", "--model", "Padim", "--post_processor=my_pkg.MyRefiner"]
    assert translate_post_processor_args(args)[-2:] == ["--model.post_processor", "my_pkg.MyRefiner"]


def test_arguments_without_alias_are_untouched():
    args = ["train", "--model", "Padim", "--data", "MVTecAD"]
    assert translate_post_processor_args(args) == args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "Padim", "--post_processor"], "needs a value"),
        (["train", "--model", "Padim", "--post_processor", "nonsense"], "Unknown post-processor 'nonsense'"),
        (["install", "--post_processor", "f2pad"], "needs one of the commands"),
    ],
)
def test_post_processor_alias_errors_name_the_problem(args, message):
    with pytest.raises(ValueError, match=message):
        translate_post_processor_args(args)


def test_console_script_reports_alias_errors_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "anomalib_pixelrefine.cli", "train", "--model", "Padim", "--post_processor", "bogus"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "Unknown post-processor 'bogus'" in result.stderr
    assert "Traceback" not in result.stderr


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, cwd=REPO, timeout=300)


def _data_args(root: Path) -> list[str]:
    return ["--data", "MVTecAD", "--data.root", str(root), "--data.category", "gravel"]


def test_plain_anomalib_cli_accepts_our_model_by_class_path(tmp_path):
    anomalib_script = str(Path(sys.executable).parent / "anomalib")  # anomalib's own console script
    result = _run(
        anomalib_script, "train", "--model", "anomalib_pixelrefine.models.Pni", "--model.pre_trained", "false",
        *_data_args(tmp_path), "--print_config",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"class_path: anomalib_pixelrefine(\.\w+)*\.Pni\n", result.stdout), result.stdout[-3000:]


def test_pixelrefine_cli_resolves_short_names_and_the_post_processor_alias(tmp_path):
    result = _run(
        sys.executable, "-m", "anomalib_pixelrefine.cli", "train", "--model", "Pae", *_data_args(tmp_path),
        "--post_processor", "paedid", "--post_processor.steps", "7", "--print_config",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"class_path: anomalib_pixelrefine(\.\w+)*\.Pae\n", result.stdout)
    assert re.search(r"class_path: anomalib_pixelrefine(\.\w+)*\.PaedidRefiner\n", result.stdout)
    assert "steps: 7" in result.stdout


@pytest.mark.parametrize("command", [[], ["train"], ["test"]])
def test_help_lists_our_models_and_post_processors(command):
    """``pixelrefine --help`` and ``pixelrefine train --help`` (anomalib shows only its guide there) list our names."""
    result = _run(sys.executable, "-m", "anomalib_pixelrefine.cli", *command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())  # rich wraps lines
    for name in ("FeatureEnsemble", "Pae", "Pni", "f2pad", "paedid"):
        assert name in text, text[:2000]
    if command:
        assert "Anomalib CLI Guide" in text  # anomalib's own guide is still shown


@pytest.mark.parametrize(
    ("command", "option"), [("demo", "--n_test_defect"), ("benchmark", "--config"), ("weights", "--install")]
)
def test_our_commands_print_their_help(command, option):
    """``pixelrefine demo --help`` (advertised in the README) lists its options; a ``%`` in a docstring broke it."""
    result = _run(sys.executable, "-m", "anomalib_pixelrefine.cli", command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert option in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_configs_parse(config):
    """Every config in ``configs/`` is accepted by ``pixelrefine train --config`` (class paths and argument names)."""
    result = _run(sys.executable, "-m", "anomalib_pixelrefine.cli", "train", "--config", str(config), "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"class_path: anomalib_pixelrefine(\.\w+)*\.\w+\n", result.stdout), result.stdout[-3000:]


def test_demo_keeps_its_model_short_name_and_settings():
    from anomalib_pixelrefine.cli import PixelRefineCLI, translate_model_args

    args = ["demo", "--model", "Padim", "--pre_trained", "false"]
    assert translate_model_args(args) == args  # the demo applies its own offline settings to the short name
    assert translate_model_args(["train", "--model", "pni"])[-1].endswith(".Pni")
    cli = PixelRefineCLI(args=args, run=False)
    assert cli.config["demo"]["model"] == "Padim"
    assert cli.config["demo"]["pre_trained"] is False


def test_unknown_names_are_one_line_errors_without_a_traceback(tmp_path):
    script = "from anomalib_pixelrefine.cli import main; main()"
    for args, message in [
        (["demo", "--model", "Nosuch", "--root", str(tmp_path / "data")], "Unknown demo model 'Nosuch'"),
        (["fit", "--model", "Padim", "--post_processor", "nosuch"], "Unknown post-processor 'nosuch'"),
    ]:
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines()[-1].startswith(f"pixelrefine: error: {message}")
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()  # refused before the demo built its data
