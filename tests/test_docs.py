"""The documentation walks: every command and code block of README.md, benchmarks/README.md and configs/ runs.

Fast checks (default suite): every ``pixelrefine`` command and config parses with the real CLI parser (flags,
classes and arguments exist), every relative link and referenced file exists, every Python block compiles and its
imports resolve. Slow (``-m slow``): the README's shell blocks run top to bottom on a tiny folder of images with
``HF_HUB_OFFLINE=1`` and no network, and fail on a non-zero exit, a traceback or a hub retry.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_pixelrefine.cli import PixelRefineCLI

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$", re.DOTALL)


def code_blocks(path: Path, language: str) -> list[str]:
    """Fenced code blocks of ``language`` in a Markdown file."""
    return [body for lang, body in _FENCE.findall(path.read_text()) if lang == language]


def shell_commands(block: str) -> list[list[str]]:
    """Commands of a shell block as argument lists: continuations joined, ``VAR=...`` lines expanded, comments cut."""
    variables: dict[str, str] = {}
    commands = []
    for statement in re.split(r"(?<!\\)\n(?![ \t])", block.replace("\\\n", " ")):
        statement = statement.strip()
        if not statement or statement.startswith("#"):
            continue
        assignment = _ASSIGNMENT.match(statement)
        if assignment:
            variables[assignment.group(1)] = " ".join(shlex.split(assignment.group(2)))
            continue
        for part in statement.split("&&"):
            expanded = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), part)
            commands.append(shlex.split(expanded, comments=True))
    return commands


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(doc name, argv)`` of every ``pixelrefine`` command in the documentation's shell blocks."""
    found = []
    for doc in DOCS:
        for block in code_blocks(doc, "bash"):
            for command in shell_commands(block):
                env_free = [arg for arg in command if not _ASSIGNMENT.match(arg)]
                if env_free and env_free[0] == "pixelrefine":
                    found.append((doc.name, env_free[1:]))
    return found


def test_the_readme_documents_the_user_path():
    subcommands = {args[0] for _, args in documented_commands() if args}
    assert {"weights", "demo", "train", "test", "predict", "export", "benchmark"} <= subcommands


@pytest.mark.parametrize(("doc", "args"), documented_commands(), ids=lambda value: " ".join(value)[:60])
def test_documented_pixelrefine_commands_parse(doc, args, capsys):
    try:
        config = PixelRefineCLI.parse_only(args)
    except SystemExit as error:
        pytest.fail(f"{doc}: `pixelrefine {' '.join(args)}` does not parse ({error.code}): {capsys.readouterr().err}")
    assert config["subcommand"] == args[0]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_configs_parse_and_name_offline_backbones(config, capsys):
    try:
        parsed = PixelRefineCLI.parse_only(["train", "--config", str(config)])
    except SystemExit as error:
        pytest.fail(f"{config.name} does not parse ({error.code}): {capsys.readouterr().err}")
    text = config.read_text()
    # Every backbone a config names has offline weights (pixelrefine weights --install true).
    backbones = re.findall(r"^[\s-]*\{?backbone:\s*([\w.]+)", text, re.MULTILINE)
    assert set(backbones) <= {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}, backbones
    assert not re.search(r"class_path: anomalib\.data\.MVTecAD$", text, re.MULTILINE)  # data that needs a download
    for command in re.findall(r"#\s+(pixelrefine [^\n(]+)", text):
        args = shlex.split(command)[1:]
        if args[:1] != ["train"]:  # comments only quote train/weights commands
            assert args == ["weights", "--install", "true"], command
    assert parsed["train"]["seed_everything"] == 0


@pytest.mark.parametrize("doc", [*DOCS, *sorted(REPO.glob("anomalib_pixelrefine/**/README.md"))], ids=lambda p: p.name)
def test_relative_links_and_files_exist(doc):
    text = doc.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    for path in re.findall(r"`((?:configs|benchmarks|anomalib_pixelrefine|tests)/[\w./-]+\.(?:py|yaml|md))`", text):
        if not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"{doc.relative_to(REPO)} names missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_python_blocks_compile_and_their_imports_resolve(doc):
    for block in code_blocks(doc, "python"):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{doc.name}: {node.module} has no {alias.name}"


# --------------------------------------------------------------------------------------------------------------- slow
def _tiny_folder(root: Path) -> None:
    """A user's folder as the README describes it: 48 px gravel tiles, 12 normal, 3 defective with masks."""
    from PIL import Image

    from anomalib_pixelrefine.data.folder import _build_category

    train, _, defects = _build_category("gravel", 48, 12, 0, 3, ["crack"], seed=0)
    images, masks = defects["crack"]
    for sub in ("train/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(train):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(root / f"train/good/{index}.png")
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(root / f"test/crack/{index}.png")
        Image.fromarray((mask.reshape(mask.shape[-2:]) * 255).byte().numpy()).save(
            root / f"ground_truth/crack/{index}_mask.png"
        )


@pytest.mark.slow
def test_readme_shell_blocks_run_offline(tmp_path):
    """Each README shell block, as written, in a fresh folder holding the README's ``./datasets/tiles``."""
    _tiny_folder(tmp_path / "datasets" / "tiles")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for block in code_blocks(REPO / "README.md", "bash"):
        if "pip install" in block or "pytest" in block:
            continue  # the set-up itself (this test runs inside it)
        result = subprocess.run(
            ["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"README block failed:\n{block}\n{output[-3000:]}"
        assert "Traceback" not in output, f"README block printed a traceback:\n{block}\n{output[-3000:]}"
        assert not re.search(r"retry|Retrying|HTTPSConnection", output, re.IGNORECASE), block
