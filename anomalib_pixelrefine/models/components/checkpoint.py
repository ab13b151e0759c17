"""Checkpoint class check: loading a checkpoint into the wrong model class fails at once, with the class it holds.

Without it, ``Pni.load_from_checkpoint(pae_ckpt)`` would first build a ``Pni`` from the foreign hyper-parameters
(default backbone, possibly downloading pretrained weights) and only then fail on the state dict.
"""

from pathlib import Path
from typing import Any

import torch
from anomalib.utils.serialization import anomalib_safe_globals

CLASS_KEY = "pixelrefine_model_class"


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_checkpoint(path: str | Path, extra_globals: Any = ()) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, read with ``weights_only`` and anomalib's allow-listed globals (memory-mapped).

    Args:
        path: Local checkpoint file.
        extra_globals: Extra types allowed by the ``weights_only`` unpickler.

    Returns:
        The checkpoint dict (``state_dict``, ``hyper_parameters``, ...).
    """
    with anomalib_safe_globals(extra=extra_globals):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def check_checkpoint_class(cls: type, checkpoint_path: str | Path, extra_globals: Any = ()) -> None:
    """Raise ``TypeError`` when the checkpoint was not saved by ``cls`` (or a subclass of it).

    The class recorded by :class:`CheckpointClassMixin` is compared when present; otherwise (checkpoints of other
    anomalib models) the hyper-parameters must all be constructor arguments of ``cls``.

    Args:
        cls: Model class the caller loads into.
        checkpoint_path: Lightning checkpoint (a local file; other locations are left to Lightning).
        extra_globals: Extra types allowed by the ``weights_only`` unpickler.

    Raises:
        TypeError: If the checkpoint holds another model.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        return
    checkpoint = load_checkpoint(path, extra_globals)
    recorded = checkpoint.get(CLASS_KEY)
    if recorded is not None:
        if recorded not in {_qualified_name(c) for c in cls.__mro__}:
            found, wanted = recorded.rsplit(".", 1)[-1], cls.__name__
            msg = f"Checkpoint {path.name} is a {found}, not a {wanted}: load it with {recorded}.load_from_checkpoint."
            raise TypeError(msg)
        return
    import inspect

    params = set(inspect.signature(cls.__init__).parameters)
    foreign = sorted(set(checkpoint.get("hyper_parameters", {})) - params - {"_instantiator", "_class_path"})
    if foreign:
        msg = (
            f"Checkpoint {path.name} was not saved by {cls.__name__}: its hyper-parameters {foreign} are not "
            f"{cls.__name__} arguments. Load it with the model class that saved it."
        )
        raise TypeError(msg)


class CheckpointClassMixin:
    """Records the model class in saved checkpoints and checks it in ``load_from_checkpoint`` (mix into models)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the class of the model next to anomalib's component configuration."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLASS_KEY] = _qualified_name(type(self))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """``AnomalibModule.load_from_checkpoint`` after checking that the checkpoint holds this model class.

        Raises:
            TypeError: If the checkpoint was saved by another model class (before building anything).
        """
        check_checkpoint_class(cls, checkpoint_path, cls.checkpoint_safe_globals())
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
