"""glibc allocator settings that keep the peak memory of anomalib's CPU training stable.

anomalib's PatchCore k-center-greedy coreset (and F2PAD on top of it) allocates and frees many large, short-lived
tensors from several threads. With glibc's defaults (up to ``8 x cores`` malloc arenas, a dynamic mmap threshold
that grows up to 32 MB) the freed memory stays fragmented inside the arenas, and the peak RSS of the *same* run
varied from 1.1 to 9.7 GB (7.7-9.5 GB with F2PAD). Two arenas and a fixed 1 MB mmap threshold (large tensors are
``mmap``-ed and returned to the system on free) make it stable.

glibc reads ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` only when a process starts, so importing
``anomalib_pixelrefine`` applies the same settings to the already running process with ``mallopt`` and exports the
variables for the processes it starts (e.g. the spawned benchmark jobs): plain Python scripts get them too. Set
``PIXELREFINE_KEEP_MALLOC=1`` (or either variable yourself) to keep glibc's defaults or your own values.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import MutableMapping

__all__ = ["MALLOC_ENV", "configure_allocator"]

# glibc settings: two malloc arenas, fixed 1 MB mmap threshold.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576"}
_M_MMAP_THRESHOLD = -3  # mallopt parameters from glibc's <malloc.h>
_M_ARENA_MAX = -8
OPT_OUT = "PIXELREFINE_KEEP_MALLOC"
_applied = False  # set once this process applied the settings (the variables it exported are then not the user's)


def configure_allocator(environ: MutableMapping[str, str] | None = None) -> bool:
    """Apply :data:`MALLOC_ENV` to this process (``mallopt``) and export it for child processes (glibc Linux only).

    Nothing is changed when the user set either variable (their choice wins), when ``PIXELREFINE_KEEP_MALLOC`` is
    set, or off glibc.

    Args:
        environ: Environment to update (default ``os.environ``, inherited by child processes).

    Returns:
        Whether the settings were applied.
    """
    global _applied
    environ = os.environ if environ is None else environ
    if _applied and environ is os.environ:
        return True
    if not sys.platform.startswith("linux") or environ.get(OPT_OUT) or any(key in environ for key in MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only; musl has no mallopt parameters for this)
    except (OSError, AttributeError):
        return False
    environ.update(MALLOC_ENV)
    arenas = libc.mallopt(_M_ARENA_MAX, int(MALLOC_ENV["MALLOC_ARENA_MAX"]))
    threshold = libc.mallopt(_M_MMAP_THRESHOLD, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))
    _applied = environ is os.environ and arenas == 1 and threshold == 1
    return arenas == 1 and threshold == 1
