"""Ensemble members: modules that map a batch of images to a list of feature maps.

Three kinds, all frozen (``eval`` mode, no gradients unless a refiner asks for input gradients):

* :class:`TimmMember` - a timm backbone with named layers (anomalib's ``TimmFeatureExtractor``), spec
  ``{"backbone": "resnet18", "layers": ["layer2", "layer3"], "pre_trained": True, "weights": None}``.
* :class:`AnomalibCheckpointMember` - the feature extractor of a trained anomalib model, spec
  ``{"checkpoint": "path.ckpt", "model": "Patchcore", "layers": None}``. Uses the torch model's ``encode`` method if it
  has one (e.g. PAE's latent map), else its ``feature_extractor`` (PatchCore, PaDiM, ...; optionally restricted to
  ``layers``), and the normalisation of the source model's own pre-processor.
* :class:`ModuleMember` - any ``nn.Module`` (programmatic use only) returning a tensor ``(B, C, h, w)``, a list/tuple
  of such tensors or a dict of them.

Images reaching the members are in ``[0, 1]`` (the ensemble's pre-processor only resizes); each member applies its own
normalisation.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn
from torchvision.transforms import v2

from anomalib_pixelrefine.models.components import input_gradients
from anomalib_pixelrefine.registry import model_class

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TIMM_KEYS = {"backbone", "layers", "pre_trained", "weights", "normalize"}
_CKPT_KEYS = {"checkpoint", "model", "layers", "normalize"}


class _Member(nn.Module):
    """Base: frozen feature source with an input normalisation."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.normalize = mean is not None and std is not None
        self.register_buffer("norm_mean", torch.tensor(mean if mean is not None else (0.0,)).view(1, -1, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std if std is not None else (1.0,)).view(1, -1, 1, 1))

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of already-normalised images."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, differentiable: bool = False) -> list[torch.Tensor]:
        """Normalise ``images`` (``[0, 1]``) and return the member's feature maps.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            differentiable: Keep the graph from the maps back to ``images`` (weights stay frozen; for refiners).
        """
        if self.normalize:
            images = (images - self.norm_mean) / self.norm_std
        if differentiable:
            with input_gradients(self):
                maps = self.extract(images)
        else:
            with torch.no_grad():
                maps = self.extract(images)
        return [m.float() for m in maps]

    def train(self, mode: bool = True) -> "_Member":
        """Members stay in eval mode (frozen batch-norm statistics)."""
        del mode
        return super().train(False)


def _as_map_list(output: Any, source: str) -> list[torch.Tensor]:
    """Normalise a member's raw output to a list of ``(B, C, h, w)`` tensors."""
    if isinstance(output, torch.Tensor):
        maps = [output]
    elif isinstance(output, dict):
        maps = list(output.values())
    elif isinstance(output, list | tuple):
        maps = list(output)
    else:
        msg = f"Member {source} returned {type(output).__name__}; expected a tensor, list/tuple or dict of tensors"
        raise TypeError(msg)
    for m in maps:
        if not isinstance(m, torch.Tensor) or m.dim() != 4:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            msg = f"Member {source} must return feature maps of shape (B, C, h, w), got {shape}"
            raise ValueError(msg)
    return maps


class TimmMember(_Member):
    """timm backbone member (wraps anomalib's ``TimmFeatureExtractor``).

    Args:
        backbone: timm model name.
        layers: Layer names (e.g. ``["layer2", "layer3"]``).
        pre_trained: Load timm's pretrained weights (downloads unless cached).
        weights: Optional local weights file (state dict of the full timm model, e.g. a ``.pth``/``.safetensors``
            saved from ``timm.create_model(name, pretrained=True)``); loaded after building with ``pre_trained=False``.
        normalize: Apply ImageNet normalisation to the ``[0, 1]`` input.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        pre_trained: bool = True,
        weights: str | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__(IMAGENET_MEAN if normalize else None, IMAGENET_STD if normalize else None)
        if not layers:
            msg = f"Member '{backbone}' needs a non-empty 'layers' list"
            raise ValueError(msg)
        self.name = backbone
        self.extractor = TimmFeatureExtractor(
            backbone=backbone,
            layers=list(layers),
            pre_trained=pre_trained and weights is None,
        )
        if weights is not None:
            self._load_weights(Path(weights))
        self.layers = list(layers)

    def _load_weights(self, path: Path) -> None:
        if not path.is_file():
            msg = f"Member '{self.name}': weights file not found: {path}"
            raise ValueError(msg)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        # A features_only timm model keeps the parameter names of the full model minus its head.
        target = self.extractor.feature_extractor.state_dict()
        missing = [k for k in target if k not in state]
        if missing:
            msg = f"Member '{self.name}': weights file {path} lacks {len(missing)} backbone tensors, e.g. {missing[:3]}"
            raise ValueError(msg)
        wrong = [
            f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in target.items() if state[k].shape != v.shape
        ]
        if wrong:
            msg = f"Member '{self.name}': weights file {path} does not fit the backbone (shape mismatch {wrong[:3]})"
            raise ValueError(msg)
        self.extractor.feature_extractor.load_state_dict({k: state[k] for k in target})

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the configured layers."""
        features = self.extractor(images)
        return [features[layer] for layer in self.layers]


class ModuleMember(_Member):
    """Wrap a user ``nn.Module`` (its output normalised by :func:`_as_map_list`); input normalisation optional."""

    def __init__(
        self,
        module: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(mean, std)
        self.module = module
        self.module.requires_grad_(False)
        self.name = type(module).__name__

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Call the wrapped module."""
        return _as_map_list(self.module(images), self.name)


def _normalize_of(pre_processor: nn.Module | None) -> tuple[list[float] | None, list[float] | None]:
    """Mean/std of the first ``Normalize`` in an anomalib pre-processor, if any."""
    transform = getattr(pre_processor, "transform", None)
    transforms = getattr(transform, "transforms", [transform]) if transform is not None else []
    for t in transforms:
        if isinstance(t, v2.Normalize):
            return list(t.mean), list(t.std)
    return None, None


class AnomalibCheckpointMember(_Member):
    """Feature extractor of a trained anomalib model loaded from a checkpoint.

    Args:
        checkpoint: Path of the Lightning checkpoint.
        model: anomalib model class name (``"Patchcore"``, ``"Padim"``, ``"Pae"``) or full import path.
        layers: Restrict a ``feature_extractor`` output to these layers (default: all it returns).
        normalize: Apply the normalisation of the source model's pre-processor.
    """

    def __init__(
        self,
        checkpoint: str,
        model: str,
        layers: Sequence[str] | None = None,
        normalize: bool = True,
    ) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            msg = f"Member checkpoint not found: {checkpoint}"
            raise ValueError(msg)
        cls = model_class(model)
        lightning_model = cls.load_from_checkpoint(str(path), map_location="cpu")
        mean, std = _normalize_of(lightning_model.pre_processor) if normalize else (None, None)
        super().__init__(mean, std)
        torch_model = lightning_model.model
        self.name = f"{model}:{path.name}"
        self.layers = list(layers) if layers else None
        if hasattr(torch_model, "encode"):
            self.source: nn.Module = torch_model
            self.use_encode = True
        elif hasattr(torch_model, "feature_extractor"):
            self.source = torch_model.feature_extractor
            self.use_encode = False
        else:
            msg = f"Model '{model}' has neither an 'encode' method nor a 'feature_extractor'; wrap it in a ModuleMember"
            raise ValueError(msg)
        self.source.requires_grad_(False)

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Latent map (``encode``) or selected feature-extractor layers."""
        output = self.source.encode(images) if self.use_encode else self.source(images)
        if self.layers is not None and isinstance(output, dict):
            missing = [layer for layer in self.layers if layer not in output]
            if missing:
                msg = f"Member {self.name}: layers {missing} not in extractor output {list(output)}"
                raise ValueError(msg)
            output = [output[layer] for layer in self.layers]
        return _as_map_list(output, self.name)


def build_member(spec: dict[str, Any] | nn.Module) -> _Member:
    """Build a member from a plain-dict spec (see module docstring) or wrap an ``nn.Module``.

    Raises:
        ValueError: On an unknown or incomplete spec.
    """
    if isinstance(spec, _Member):
        return spec
    if isinstance(spec, nn.Module):
        return ModuleMember(spec)
    if check_member_spec(spec) == "backbone":
        return TimmMember(**spec)
    return AnomalibCheckpointMember(**spec)


def check_member_spec(spec: Any) -> str:
    """Check a plain-dict member spec without building it (the benchmark checks its grids with this first).

    Returns:
        ``"backbone"`` or ``"checkpoint"``.

    Raises:
        ValueError: On an unknown or incomplete spec.
    """
    if not isinstance(spec, dict):
        msg = f"A member must be a dict spec or an nn.Module, got {type(spec).__name__}: {spec!r}"
        raise ValueError(msg)
    if "backbone" in spec:
        unknown = set(spec) - _TIMM_KEYS
        if unknown:
            msg = f"Unknown keys {sorted(unknown)} in backbone member {spec!r}; allowed: {sorted(_TIMM_KEYS)}"
            raise ValueError(msg)
        if "layers" not in spec:
            msg = f"Backbone member {spec!r} needs 'layers'"
            raise ValueError(msg)
        return "backbone"
    if "checkpoint" in spec:
        unknown = set(spec) - _CKPT_KEYS
        if unknown or "model" not in spec:
            msg = f"Checkpoint member {spec!r} needs 'checkpoint' and 'model' (optional: 'layers', 'normalize')"
            raise ValueError(msg)
        return "checkpoint"
    msg = f"Member spec {spec!r} needs a 'backbone' (timm) or a 'checkpoint' (trained anomalib model) key"
    raise ValueError(msg)
