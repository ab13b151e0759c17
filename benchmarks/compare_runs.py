"""Compare the quality metrics of two benchmark runs of one profile (the reproduction check).

Usage:
    python benchmarks/compare_runs.py RUN_A RUN_B     # folders holding results.csv

Prints, per metric, the largest absolute difference over the rows both runs have (same data set, model,
post-processor, calibration and seed), and the rows that differ. Times, memory and load are not compared.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

KEY = ["dataset", "model", "post_processor", "calibration", "seed"]
_NOT_QUALITY = ("_s", "_ms", "rss", "load", "time", "threads", "n_train", "n_test")


def compare(run_a: Path, run_b: Path) -> pd.DataFrame:
    """Absolute differences of every quality metric, one row per job both runs have."""
    a, b = (pd.read_csv(Path(run) / "results.csv") for run in (run_a, run_b))
    key = [column for column in KEY if column in a.columns and column in b.columns]
    metrics = [
        column
        for column in a.columns
        if column in b.columns and a[column].dtype.kind == "f" and not any(tag in column for tag in _NOT_QUALITY)
    ]
    merged = a.merge(b, on=key, suffixes=("_a", "_b"))
    diff = pd.DataFrame({metric: (merged[f"{metric}_a"] - merged[f"{metric}_b"]).abs() for metric in metrics})
    return pd.concat([merged[key], diff], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    diff = compare(args.run_a, args.run_b)
    metrics = diff.select_dtypes("number").drop(columns=["seed"], errors="ignore")
    print(f"{len(diff)} jobs in both runs, {metrics.shape[1]} quality metrics")
    print(f"largest difference: {metrics.max().max():.6f}")
    changed = metrics.max(axis=1) > 0
    if changed.any():
        print(diff.loc[changed, [c for c in KEY if c in diff.columns]].assign(max_diff=metrics.max(axis=1)[changed]))
    sys.exit(0)


if __name__ == "__main__":
    main()
