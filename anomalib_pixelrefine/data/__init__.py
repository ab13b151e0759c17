"""Synthetic defects, MVTec-style folders and the embedded default benchmark."""

from .generators import (
    CrackDefect,
    CutPaste,
    CutPasteScar,
    DefectGenerator,
    HandDrawnDefect,
    MixedDefect,
    PerlinDefect,
    SyntheticDefectDataset,
)

__all__ = [
    "CrackDefect",
    "CutPaste",
    "CutPasteScar",
    "DefectGenerator",
    "HandDrawnDefect",
    "MixedDefect",
    "PerlinDefect",
    "SyntheticDefectDataset",
]
