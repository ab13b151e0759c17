"""Thin wrapper of ``pixelrefine benchmark`` (same pipeline, same outputs).

Usage:
    python benchmarks/run_benchmark.py --quick
    python benchmarks/run_benchmark.py --config benchmarks/configs/full.yaml [--output_dir DIR]
    python benchmarks/run_benchmark.py --config realistic            # pretrained models on the realistic data
    python benchmarks/run_benchmark.py --config realistic_refiners   # PaDiM/PatchCore alone, + F2PAD, + PAEDID
    python benchmarks/run_benchmark.py --config realistic --resume   # finish an interrupted run
    python benchmarks/run_benchmark.py --config realistic --report-only [EXTRA_DIR ...]  # tables of a partial run
    python benchmarks/run_benchmark.py --config f2pad     # a method profile (also pni, pni_coreset_noise,
                                                          # feature_ensemble, pae, pae_capacity, data_default,
                                                          # ensemble_vs_members, pni_ablation, pni_vs_patchcore,
                                                          # pni_seeds)
    python benchmarks/run_benchmark.py --write-configs   # regenerate benchmarks/configs/<profile>.yaml
    python benchmarks/run_benchmark.py --compact benchmarks/results/f2pad   # before committing a run's results

Writes results.{csv,json,md}, per_image.csv, plots/*.png and qualitative/*.png into the configuration's
``output_dir`` (``./results/benchmark/<profile>``, outside the source tree) and prints the Markdown table. The
committed results were written with ``--output_dir benchmarks/results/<profile>``.
"""

import argparse
from pathlib import Path

from anomalib_pixelrefine.launcher import configure_threads

configure_threads()  # the thread policy of the ``pixelrefine`` command, set before torch is imported

import yaml  # noqa: E402

from anomalib_pixelrefine.benchmark import run_benchmark  # noqa: E402
from anomalib_pixelrefine.benchmark.pipeline import failure_summary  # noqa: E402
from anomalib_pixelrefine.benchmark.profiles import DESCRIPTIONS, PROFILES  # noqa: E402
from anomalib_pixelrefine.errors import PixelRefineError  # noqa: E402

CONFIG_DIR = Path(__file__).parent / "configs"


def write_configs() -> None:
    """Write every profile to ``benchmarks/configs/<name>.yaml``, its description and command as the header."""
    for name, profile in PROFILES.items():
        path = CONFIG_DIR / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = [
            f"# Profile `{name}` of anomalib_pixelrefine/benchmark/profiles.py (regenerate this file with",
            "# `python benchmarks/run_benchmark.py --write-configs`; edit the profile, not this file).",
            f"# Run: python benchmarks/run_benchmark.py --config {name}   (or: pixelrefine benchmark --config {name})",
            f"# Writes ./results/benchmark/{name}; the committed results: add --output_dir benchmarks/results/{name}",
            *(f"# {line}" for line in DESCRIPTIONS[name].splitlines()),
        ]
        text = "\n".join(header) + "\n" + yaml.safe_dump(profile, sort_keys=False, default_flow_style=False)
        path.write_text(text)
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help=f"YAML file or profile name ({', '.join(PROFILES)})")
    parser.add_argument("--quick", action="store_true", help="quick profile (about 1.5 min on 2 CPU cores)")
    parser.add_argument("--output_dir", default=None, help="override the output folder")
    parser.add_argument("--write-configs", action="store_true", help="regenerate benchmarks/configs/*.yaml")
    parser.add_argument("--compact", metavar="OUTPUT_DIR", help="relative paths, gzipped per_image.csv, halved PNGs")
    parser.add_argument("--resume", action="store_true", help="skip the jobs of <output_dir>/rows.partial.jsonl")
    parser.add_argument(
        "--report-only",
        nargs="*",
        metavar="EXTRA_DIR",
        default=None,
        help="write the tables from <output_dir>/rows.partial.jsonl (plus those of EXTRA_DIRs) without running jobs",
    )
    args = parser.parse_args()
    if args.write_configs:
        write_configs()
        return
    if args.compact:
        from anomalib_pixelrefine.benchmark.compact import compact_results

        for path in compact_results(args.compact):
            print(f"compacted {path}")
        return
    if args.report_only is not None:
        from anomalib_pixelrefine.benchmark import load_config
        from anomalib_pixelrefine.benchmark.pipeline import report_partial

        output_dir = args.output_dir or load_config(args.config, quick=args.quick)["output_dir"]
        report_partial(output_dir, args.report_only)
        return
    config = args.config
    if args.resume:
        from anomalib_pixelrefine.benchmark import load_config

        config = {**load_config(config, quick=args.quick), "resume": True}
    try:
        frame = run_benchmark(config, quick=args.quick and not args.resume, output_dir=args.output_dir)
    except PixelRefineError as error:  # a refusal (configuration, output folder): one line
        raise SystemExit(f"run_benchmark: error: {error}") from None
    summary = failure_summary(frame)
    if summary:  # the tables are written; a failed job still fails the run
        raise SystemExit(f"run_benchmark: error: {summary}")


if __name__ == "__main__":
    main()
