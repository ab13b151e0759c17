"""Entry point of the ``pixelrefine`` console script: process settings first, then anomalib's CLI.

Two settings must be in place before torch (and its OpenMP runtime) is imported, which is why this module imports
nothing heavy:

- **Threads** (:data:`THREAD_ENV`): one intra-op thread and passive OpenMP waiting. Results of a run then do not
  depend on the core count or on other work on the machine (the benchmark's committed numbers reproduce from the
  plain command), and OpenMP's spin-waiting, which made the same refinement 4-6x slower on a shared CPU, is off. Set
  ``OMP_NUM_THREADS`` (e.g. to your core count) or ``OMP_WAIT_POLICY`` yourself to choose otherwise.
- **Allocator**: glibc's two arenas and fixed 1 MB mmap threshold, applied when the package is imported
  (:mod:`anomalib_pixelrefine.allocator`).

It also makes the output say each thing once (:func:`configure_output`): one log handler (anomalib's
``configure_logger`` adds a plain and a rich handler, so every line came twice), and third-party messages that tell
a user nothing are dropped: deprecation notes of timm/anomalib/Lightning internals, timm's list of the classifier
weights a feature extractor does not use, Lightning's advertising tips and its notes on models without optimisers.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import MutableMapping

__all__ = ["QUIET_WARNINGS", "THREAD_ENV", "configure_output", "configure_threads", "main"]

#: Thread policy of the ``pixelrefine`` command and the processes it starts (a variable the user set wins).
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def configure_threads(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`THREAD_ENV` where the user did not set the variable; also torch's thread count if torch is loaded.

    Args:
        environ: Environment to update (default ``os.environ``, inherited by child processes).

    Returns:
        The variables that were set.
    """
    import sys

    environ = os.environ if environ is None else environ
    applied = {key: value for key, value in THREAD_ENV.items() if key not in environ}
    environ.update(applied)
    torch = sys.modules.get("torch")
    if torch is not None and environ is os.environ:
        # Imported before us (e.g. ``python -m anomalib_pixelrefine.cli``): the wait policy is fixed, the count is not.
        torch.set_num_threads(max(1, int(environ["OMP_NUM_THREADS"])))
    return applied


#: Warnings (message regexes) about library internals that a user cannot act on.
QUIET_WARNINGS = (
    r"Importing from timm\.models\.layers is deprecated",
    r"The anomalib\.models\.components\.dinov2 package is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`LightningModule\.configure_optimizers` returned `None`",  # memory-bank models train no weights
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen backbones
    r"The following callbacks returned in `LightningModule\.configure_callbacks` will override",
    r"The dirpath has changed from",  # a checkpoint restored for test/predict: the new run writes its own folder
    r"'pin_memory' argument is set as true but no accelerator is found",
)
_DROPPED_PREFIXES = (
    "\N{ELECTRIC LIGHT BULB} Tip:",  # Lightning's advertising
    "The following callbacks returned in `LightningModule.configure_callbacks` will override",  # anomalib's design
)
_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
# timm's classifier/head weights, unused by a features_only backbone (``Unexpected keys (...)`` on every build).
_HEAD_KEY = re.compile(r"^(classifier|fc|head|conv_head|bn2|global_pool|last_linear)\.")


class _QuietFilter(logging.Filter):
    """Drop log records that tell a user nothing (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_DROPPED_PREFIXES):
            return False
        if record.name.startswith("timm") and message.startswith("Unexpected keys ("):
            keys = message[len("Unexpected keys (") :].split(")", 1)[0].split(", ")
            return not all(_HEAD_KEY.match(key) for key in keys)
        return True


def configure_output(level: int = logging.INFO) -> None:
    """One log handler (anomalib's format), each message once; library-internal warnings dropped."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=_LOG_FORMAT, level=level)
    root.setLevel(level)
    quiet = _QuietFilter()
    for name in ("", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(logging.Formatter(_LOG_FORMAT))
            if quiet not in handler.filters:
                handler.addFilter(quiet)


def main() -> None:
    """``pixelrefine``: thread policy and quiet output, then the CLI (importing the package sets the allocator)."""
    configure_threads()
    configure_output()
    from anomalib_pixelrefine.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
