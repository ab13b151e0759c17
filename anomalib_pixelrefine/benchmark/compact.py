"""Make a finished run's output folder fit for committing (``run_benchmark.py --compact <output_dir>``).

A run writes ``per_image.csv`` with the absolute image paths of the machine it ran on, full-size PNGs, and
``rows.partial.jsonl`` / ``resume_config.yaml`` for an interrupted run. :func:`compact_results` rewrites the image
paths relative to the data root (``datasets/...``), gzips ``per_image.csv`` (``pandas.read_csv`` reads the ``.gz``
as is), halves the PNGs wider than ``max_width`` and deletes the files of the resume machinery. Which qualitative grids
to keep is the committer's choice (a few per profile: ``benchmarks/README.md``).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from PIL import Image

__all__ = ["compact_results"]

#: Files the resume machinery writes next to the results; a finished run does not need them.
RESUME_FILES = ("rows.partial.jsonl", "resume_config.yaml")
_DATA_PATH = re.compile(r"(?m)(^|,)[^,\n]*?/(datasets/)")


def compact_results(output_dir: str | Path, max_width: int = 600) -> list[Path]:
    """Compact a run's output folder in place; returns the files written or deleted.

    Args:
        output_dir: The run's output folder (``results.md`` must be there: only finished runs are compacted).
        max_width: PNGs wider than this are halved (PNG-optimised, 256 colours).

    Raises:
        FileNotFoundError: If ``output_dir`` holds no ``results.md``.
    """
    folder = Path(output_dir)
    if not (folder / "results.md").is_file():
        msg = f"{folder} holds no results.md: only the output folder of a finished run is compacted."
        raise FileNotFoundError(msg)
    changed = []
    rows = folder / "per_image.csv"
    if rows.is_file():
        text = _DATA_PATH.sub(r"\1\2", rows.read_text())
        with gzip.GzipFile(folder / "per_image.csv.gz", "wb", mtime=0) as handle:
            handle.write(text.encode())
        rows.unlink()
        changed += [rows, folder / "per_image.csv.gz"]
    for path in sorted(folder.rglob("*.png")):
        image = Image.open(path)
        if image.width > max_width:
            small = image.convert("RGB").resize((image.width // 2, image.height // 2), Image.LANCZOS)
            small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            changed.append(path)
    for name in RESUME_FILES:
        if (folder / name).is_file():
            (folder / name).unlink()
            changed.append(folder / name)
    return changed
