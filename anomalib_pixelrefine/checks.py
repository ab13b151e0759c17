"""Argument and input checks shared by the models and refiners: one-line ``ValueError`` naming what is wrong.

Example:
    >>> check_number("F2PAD", "lr", -0.01, low=0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: F2PAD: lr must be > 0 and finite, got -0.01.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from anomalib_pixelrefine.errors import InvalidArgumentError

#: Default share of normal images allowed above the image threshold, shared by the post-processors and the
#: datamodules that hold back the normal images it is measured on (see the post_processing README).
DEFAULT_MAX_FALSE_ALARM_RATE = 0.05


__all__ = [
    "DEFAULT_MAX_FALSE_ALARM_RATE",
    "FiniteInputMixin",
    "NoEffectWarning",
    "check_choice",
    "check_finite",
    "check_number",
    "check_seed",
    "check_widths",
    "non_default",
    "normals_needed",
    "warn_no_effect",
]


def normals_needed(rate: float) -> int:
    """Held-back normal images needed to meet a budget ``rate``: ``n + 1 >= 1 / rate`` (their maximum then meets it)."""
    return max(math.ceil(1 / rate - 1 - 1e-9), 1) if rate > 0 else 1


# numpy's RandomState (scikit-learn's ``random_state``) accepts seeds in [0, 2**32).
MAX_SEED = 2**32 - 1


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_fmt(high)}"
    return "a number"


def check_number(
    owner: str,
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number (an integer if ``integer``) in the given range.

    Args:
        owner: Class name shown first in the message.
        name: Parameter name.
        value: The value to check.
        low: Lower bound (``None``: unbounded).
        high: Upper bound (``None``: unbounded).
        low_open: Exclude ``low``.
        high_open: Exclude ``high``.
        integer: Require an integer (``bool`` is refused).
        optional: Accept ``None``.

    Raises:
        ValueError: ``"<owner>: <name> must be <range> and finite|(an integer), got <value>."``
    """
    if value is None and optional:
        return
    kind = "(an integer)" if integer else "and finite"
    expected = f"{_range_text(low, high, low_open, high_open)} {kind}{' or None' if optional else ''}"
    valid_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    ok = valid_type and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        msg = f"{owner}: {name} must be {expected}, got {value!r}."
        raise InvalidArgumentError(msg)


def check_seed(owner: str, seed: Any) -> None:
    """Seeds are integers in ``[0, 2**32 - 1]`` (torch, numpy and scikit-learn all accept them)."""
    check_number(owner, "seed", seed, 0, MAX_SEED, integer=True)


class NoEffectWarning(UserWarning):
    """An argument was set that does nothing in the chosen mode (e.g. optimisation settings with ``max_iters=0``)."""


def non_default(function: Callable[..., Any], values: dict[str, Any]) -> list[str]:
    """The names in ``values`` whose value differs from ``function``'s default for that parameter."""
    parameters = inspect.signature(function).parameters

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple | list) else value

    return [name for name, value in values.items() if plain(value) != plain(parameters[name].default)]


def warn_no_effect(owner: str, names: Iterable[str], reason: str, stacklevel: int = 3) -> None:
    """Warn once (at construction) that the arguments ``names`` have no effect ``reason``; nothing if none."""
    names = sorted(names)
    if names:
        verb = "has" if len(names) == 1 else "have"
        warnings.warn(f"{owner}: {', '.join(names)} {verb} no effect {reason}.", NoEffectWarning, stacklevel=stacklevel)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        msg = f"{owner}: {name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}."
        raise InvalidArgumentError(msg)


def check_widths(owner: str, name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a non-empty sequence of positive integers (layer widths)."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    ok = ok and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        msg = f"{owner}: {name} must be a non-empty sequence of integers >= 1, got {value!r}."
        raise InvalidArgumentError(msg)


def check_finite(owner: str, what: str, tensor: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming ``what`` and the affected batch items if ``tensor`` holds NaN or inf.

    Args:
        owner: Class name shown first in the message.
        what: What the tensor is, e.g. ``"input image"`` or ``"host anomaly map"``.
        tensor: Batch ``(B, ...)``; ``None`` and integer tensors pass.
    """
    if tensor is None or not tensor.is_floating_point():
        return
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = ~finite
    count = int(bad.sum())
    items = bad.reshape(len(tensor), -1).any(1).nonzero().flatten().tolist() if tensor.dim() > 0 else []
    shown = ", ".join(str(i) for i in items[:5]) + (", ..." if len(items) > 5 else "")
    kinds = "/".join(k for k, m in (("NaN", torch.isnan(tensor)), ("inf", torch.isinf(tensor))) if bool(m.any()))
    msg = f"{owner}: the {what} holds {count} non-finite value(s) ({kinds}) in batch item(s) {shown}."
    raise InvalidArgumentError(msg)


class FiniteInputMixin:
    """Lightning-module mixin: refuse batches whose images hold NaN/inf (they would give NaN scores and maps).

    The check runs in the ``on_*_batch_start`` hooks, so it covers anomalib's ``test_step``/``predict_step`` too.
    """

    def _check_batch(self, batch: Any) -> None:
        check_finite(type(self).__name__, "input image", getattr(batch, "image", None))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Check the training images."""
        del batch_idx
        self._check_batch(batch)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Check the validation images."""
        del batch_idx, dataloader_idx
        self._check_batch(batch)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Check the test images."""
        del batch_idx, dataloader_idx
        self._check_batch(batch)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Check the prediction images."""
        del batch_idx, dataloader_idx
        self._check_batch(batch)
