"""Tests of the ``pixelrefine`` command line interface."""

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
