"""The README's set-up commands, CI and the package's public names agree."""

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.DOTALL)


def test_readme_setup_installs_then_runs_offline_and_ci_runs_the_test_command():
    commands = _readme_commands()
    assert len(commands) == 3, commands
    install, first_run, test_command = commands
    assert "torch==2.14.1 torchvision==0.29.1" in install
    assert first_run.splitlines() == ["pixelrefine weights --install true", "pixelrefine demo"]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command.strip() in ci_lines
    # CI installs torch first, then the package with the test extra, like the README.
    torch_line = ci_lines.index("pip install torch==2.14.1 torchvision==0.29.1")
    package_line = next(i for i, line in enumerate(ci_lines) if line.startswith("pip install -e") and "test" in line)
    assert torch_line < package_line < ci_lines.index(test_command.strip())


def test_pyproject_declares_the_console_script_and_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "anomalib-pixelrefine"
    # The launcher sets the thread policy before torch is imported, then runs anomalib_pixelrefine.cli:main.
    assert project["scripts"]["pixelrefine"] == "anomalib_pixelrefine.launcher:main"
    dependencies = " ".join(project["dependencies"])
    for name in ("anomalib>=2.7,<2.8", "torch", "lightning", "kornia", "scipy", "numpy", "jsonargparse"):
        assert name in dependencies


def test_top_level_exports_resolve_to_the_public_classes():
    from anomalib.models import AnomalibModule
    from anomalib.post_processing import PostProcessor

    import anomalib_pixelrefine

    for name in anomalib_pixelrefine.__all__:
        assert getattr(anomalib_pixelrefine, name) is not None, name
    for name in ("Pae", "Pni", "FeatureEnsemble"):
        assert issubclass(getattr(anomalib_pixelrefine, name), AnomalibModule)
    for name in ("F2PAD", "PaedidRefiner"):
        assert issubclass(getattr(anomalib_pixelrefine, name), PostProcessor)
    assert "F2PAD" in dir(anomalib_pixelrefine)


def test_unknown_top_level_name_raises_attribute_error():
    import pytest

    import anomalib_pixelrefine

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = anomalib_pixelrefine.Nope
