"""Synthetic defects, MVTec-style folders and the embedded default benchmark."""

from .folder import (
    DEFAULT_CATEGORIES,
    DEFAULT_DEFECTS,
    FolderNotOwnedError,
    InvalidDatasetError,
    build_default_benchmark,
    default_datamodule,
    elpv_available,
    validate_mvtec_folder,
    write_mvtec_folder,
)
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
    "DEFAULT_CATEGORIES",
    "DEFAULT_DEFECTS",
    "CrackDefect",
    "CutPaste",
    "CutPasteScar",
    "DefectGenerator",
    "FolderNotOwnedError",
    "HandDrawnDefect",
    "InvalidDatasetError",
    "MixedDefect",
    "PerlinDefect",
    "SyntheticDefectDataset",
    "build_default_benchmark",
    "default_datamodule",
    "elpv_available",
    "validate_mvtec_folder",
    "write_mvtec_folder",
]
