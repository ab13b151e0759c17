"""Benchmark suite: a real 1-job run, grid expansion, configuration errors, CLI registration, plots."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from anomalib.cli import pipelines as anomalib_pipelines
from anomalib.pipelines import Benchmark
from conftest import tiny_embedded_data

from anomalib_pixelrefine.benchmark import (
    BenchmarkConfigError,
    PixelRefineBenchmark,
    PixelRefineBenchmarkJob,
    PixelRefineBenchmarkJobGenerator,
    expand_grid,
    load_config,
    pixelrefine_pipelines,
    plot_dice_vs_size,
    run_benchmark,
)
from anomalib_pixelrefine.benchmark.job import model_init_args, pretrained_label
from anomalib_pixelrefine.benchmark.profiles import FULL_PROFILE, PROFILES
from anomalib_pixelrefine.benchmark.report import TABLE_COLUMNS

TINY_CATEGORY = "gravel"  # see conftest.py
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def _mvtec(root: Path, category: str = TINY_CATEGORY) -> dict:
    return {
        "class_path": "MVTecAD",
        "init_args": {
            "root": str(root),
            "category": category,
            "num_workers": 0,
            "train_batch_size": 4,
            "eval_batch_size": 4,
        },
    }


PADIM = {
    "class_path": "Padim",
    "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]},
}


def test_one_padim_job_writes_tables_and_plots(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = {
        "isolation": "none",
        "output_dir": str(out),
        "image_size": 64,
        "qualitative_samples": 2,
        "benchmark": {"seed": 0, "model": PADIM, "data": _mvtec(tiny_mvtec_root), "engine": {"max_epochs": 1}},
    }
    frame = run_benchmark(config)

    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["status"] == "ok", row["reason"]
    assert (row["dataset"], row["model"], row["post_processor"], row["seed"]) == (
        "MVTecAD/gravel",
        "Padim",
        "default",
        0,
    )
    for column in ("image_auroc", "pixel_auroc", "aupro", "best_dice", "best_iou", "dice", "iou"):
        assert 0.0 <= row[column] <= 1.0, column
    for column in ("mean_image_dice", "mean_image_iou", "empty_mask_rate", "good_fp_area"):
        assert 0.0 <= row[column] <= 1.0, column
    assert (row["calibration"], row["pre_trained"]) == ("datamodule", "false")
    assert row["best_dice"] >= row["dice"] - 1e-6  # the best threshold is at least as good as the model's
    assert row["n_test"] > 0
    assert row["train_s"] > 0
    assert row["infer_ms_per_image"] > 0
    assert row["cpu_s"] > 0
    assert row["peak_rss_mb"] >= row["rss_start_mb"] > 0

    table = pd.read_csv(out / "results.csv")
    assert set(TABLE_COLUMNS) <= set(table.columns)
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][0]["job_id"] == row["job_id"]
    assert saved["metadata"]["wall_time_s"] > 0
    assert saved["metadata"]["cpu_time_s"] > 0
    markdown = (out / "results.md").read_text()
    assert "| dataset | model | post_processor | calibration | pre_trained | seed | image_auroc |" in markdown
    assert "| oracle_best_dice | mean_image_dice | mean_image_iou | empty_mask_rate | good_fp_area |" in markdown
    assert "by defect kind" in markdown
    assert "by defect size" in markdown
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == row["n_test"]
    defective = per_image[per_image["area_fraction"] > 0]
    assert len(defective) > 0
    assert defective["dice"].between(0, 1).all()
    assert defective["size_bin"].notna().all()
    # The per-image records and the metric agree on the deployed masks.
    assert defective["dice"].mean() == pytest.approx(row["mean_image_dice"], abs=1e-6)
    assert (defective["pred_area_fraction"] == 0).mean() == pytest.approx(row["empty_mask_rate"], abs=1e-6)
    # Per size bin, the oracle Dice (bin's defective images + all good ones) is at least the pooled Dice of the
    # deployed masks on the same pool, recomputed from the per-image records (tp = dice * (pred + gt) / 2).
    good = per_image[per_image["gt_label"] == 0]
    for size, part in defective.groupby("size_bin"):
        pool = pd.concat([part, good])
        tp = (part["dice"] * (part["pred_area_fraction"] + part["area_fraction"]) / 2).sum()
        deployed = 2 * tp / (pool["pred_area_fraction"].sum() + pool["area_fraction"].sum())
        assert deployed - 1e-6 <= row[f"oracle_dice_{size}"] <= 1.0, size
        assert 0.0 <= row[f"aupro_{size}"] <= 1.0, size
    assert "Oracle best Dice (threshold picked on the test masks in hindsight) by defect size" in markdown
    assert "AUPRO by defect size" in markdown
    pngs = [
        out / "plots" / "bars_MVTecAD_gravel.png",
        out / "plots" / "dice_vs_size.png",
        out / row["qualitative_png"],
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png


def test_grid_expands_to_the_cartesian_product(tiny_mvtec_root: Path) -> None:
    benchmark = {
        "seed": {"grid": [0, 1]},
        "model": {"grid": [PADIM, {"class_path": "Patchcore"}]},
        "post_processor": {"grid": ["default", "f2pad"]},
        "data": {"grid": [_mvtec(tiny_mvtec_root), _mvtec(tiny_mvtec_root, "other")]},
        "engine": {"max_epochs": 1},
    }
    config = load_config({"benchmark": benchmark})
    generator = PixelRefineBenchmarkJobGenerator("cpu", config)
    jobs = list(generator.generate_jobs(config["benchmark"]))
    assert len(jobs) == 16
    labels = {tuple(job.labels.values()) for job in jobs}
    assert len(labels) == 16
    assert {label[1] for label in labels} == {"Padim", "Patchcore"}
    assert {label[2] for label in labels} == {"default", "f2pad"}
    assert {label[0] for label in labels} == {"MVTecAD/gravel", "MVTecAD/other"}
    assert {label[4] for label in labels} == {0, 1}
    assert len({job.job_id for job in jobs}) == 16
    # ``exclude`` drops the grid points matching all given labels
    config["exclude"] = [{"model": "patchcore", "post_processor": ["f2pad"]}, {"dataset": "MVTecAD/other", "seed": 1}]
    kept = {tuple(job.labels.values()) for job in PixelRefineBenchmarkJobGenerator("cpu", config)(config["benchmark"])}
    assert len(kept) == 16 - 4 - 4 + 1
    assert not any(label[1:3] == ("Patchcore", "f2pad") for label in kept)
    assert not any(label[0] == "MVTecAD/other" and label[3] == 1 for label in kept)
    # a nested grid inside init_args (anomalib's style) is expanded too
    nested = {"model": PADIM, "data": {"class_path": "MVTecAD", "init_args": {"category": {"grid": ["a", "b", "c"]}}}}
    assert [job["data"]["init_args"]["category"] for job in expand_grid(nested)] == ["a", "b", "c"]


def test_profiles_are_valid_and_match_the_yaml_files() -> None:
    for name, profile in PROFILES.items():
        from_file = yaml.safe_load((REPO / "benchmarks" / "configs" / f"{name}.yaml").read_text())
        assert from_file == profile, f"benchmarks/configs/{name}.yaml differs from the {name} profile"
        assert load_config(name) == load_config(str(REPO / "benchmarks" / "configs" / f"{name}.yaml"))
    quick = load_config(quick=True)
    jobs = list(expand_grid(quick["benchmark"]))
    assert {job["model"]["class_path"] for job in jobs} >= {"Padim", "Patchcore"}  # the peers are always in
    assert {job["model"]["class_path"] for job in expand_grid(FULL_PROFILE["benchmark"])} >= {"Cflow"}
    # anomalib's own benchmark configuration format is accepted as it is
    anomalib_style = {
        "accelerator": ["cpu"],
        "benchmark": {
            "seed": 42,
            "model": {"grid": [{"class_path": "Patchcore"}, {"class_path": "Padim"}]},
            "data": {"class_path": "MVTecAD", "init_args": {"category": {"grid": ["bottle", "cable"]}}},
        },
    }
    assert len(list(expand_grid(load_config(anomalib_style)["benchmark"]))) == 4
    # a config file given with --quick overrides the profile's values
    assert load_config({"output_dir": "x"}, quick=True)["output_dir"] == "x"


def expand_grid_jobs(config: dict) -> list[PixelRefineBenchmarkJob]:
    """The jobs a configuration runs (after ``exclude``)."""
    return list(PixelRefineBenchmarkJobGenerator("cpu", config).generate_jobs(config["benchmark"]))


def test_method_profiles_run_named_pretrained_variants() -> None:
    suites = {"quick", "full", "realistic", "realistic_refiners"}
    assert set(PROFILES) - suites >= {"f2pad", "pni", "pni_coreset_noise", "feature_ensemble", "pae", "pae_capacity"}
    for name in set(PROFILES) - suites:
        config = load_config(name)
        assert config["output_dir"] == f"./results/benchmark/{name}"  # never into the source tree
        jobs = expand_grid_jobs(config)
        assert len({job.job_id for job in jobs}) == len(jobs) > 0, name
        labels = {pretrained_label(job._model_spec().get("init_args") or {}) for job in jobs}
        # Every method profile but the data-build timing runs pretrained backbones (or none: Pae).
        assert labels <= ({"false"} if name == "data_default" else {"true", "n/a"}), (name, labels)
    f2pad = expand_grid_jobs(load_config("f2pad"))
    ablations = {job.labels["post_processor"] for job in f2pad if job.labels["model"] == "Patchcore"}
    assert {
        "default",
        "f2pad",
        "f2pad_paper",
        "f2pad_no_sharing",
        "f2pad_no_adaptive_step",
        "f2pad_full_image",
    } <= ablations
    padim = {job.labels["post_processor"] for job in f2pad if job.labels["model"] == "Padim"}
    assert padim == {"default", "f2pad", "f2pad_paper"}
    no_sharing = next(job for job in f2pad if job.labels["post_processor"] == "f2pad_no_sharing")
    # The ablations remove one component from the paper's method (Telea n0 and the optimisation).
    assert no_sharing.job_config["post_processor"]["init_args"] == {
        "init": "inpaint",
        "max_iters": 50,
        "optimisation": {"gradient_sharing": False},
    }
    pni_models = {job.labels["model"] for job in expand_grid_jobs(load_config("pni"))}
    assert pni_models == {"Patchcore", "Pni_base", "Pni_N", "Pni_NP", "Pni_NPR", "Pni_NPR_score_combine"}


def test_models_with_a_seed_argument_follow_the_job_seed() -> None:
    from anomalib.models import Padim

    from anomalib_pixelrefine.models import Pae

    assert model_init_args(Pae, {"alpha": 0.2}, 3) == {"alpha": 0.2, "seed": 3}
    assert model_init_args(Pae, {"seed": 7}, 3) == {"seed": 7}  # an explicit seed is kept
    assert model_init_args(Padim, {"n_features": 10}, 3) == {"n_features": 10}  # no seed argument: unchanged


def _in_process_config(out: Path, benchmark: dict, **extra: object) -> dict:
    """A quiet run in this process at 32 px (no plots, table print or qualitative grid)."""
    settings = {"isolation": "none", "image_size": 32, "qualitative_samples": 0, "plots": False, "print_table": False}
    return {**settings, "output_dir": str(out), "benchmark": benchmark, **extra}


def test_named_variants_and_seeds_on_the_embedded_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    padim = {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]}
    data = tiny_embedded_data(tmp_path / "data", n_train=8, n_test_good=2, n_test_defect=1)
    benchmark = {
        "seed": {"grid": [0, 1]},
        "model": {
            "grid": [
                {"class_path": "Padim", "name": "Padim_d8", "init_args": {**padim, "n_features": 8}},
                {"class_path": "Padim", "name": "Padim_d32", "init_args": {**padim, "n_features": 32}},
            ]
        },
        "data": data,
    }
    # exclude rules match the names
    config = _in_process_config(out, benchmark, exclude=[{"model": "padim_d32", "seed": 1}])
    frame = run_benchmark(config)
    assert list(frame["status"]) == ["ok"] * 3, list(frame["reason"])
    assert sorted(frame["job_id"]) == [
        "gravel-Padim_d32-default-s0",
        "gravel-Padim_d8-default-s0",
        "gravel-Padim_d8-default-s1",
    ]
    init_args = {row["model"]: json.loads(row["model_init_args"]) for _, row in frame.iterrows()}
    assert (init_args["Padim_d8"]["n_features"], init_args["Padim_d32"]["n_features"]) == (8, 32)
    assert set(frame["calibration"]) == {"synthetic"}
    markdown = (out / "results.md").read_text()
    assert "| Padim_d8 | default | synthetic | 2 |" in markdown  # the seed spread of the variant with two seeds
    assert "Standard deviation over seeds" in markdown
    metadata = json.loads((out / "results.json").read_text())["metadata"]
    assert set(metadata["data_build_s"]) == {"gravel"}
    assert metadata["data_build_s"]["gravel"] > 0  # built by this run (a cached build would take ~0 s)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"benchmark": {"model": PADIM}}, "'benchmark.data' is missing"),
        ({"model": PADIM}, "Unknown top-level benchmark keys ['model']"),
        ({"benchmark": {"model": PADIM, "data": "default", "epochs": 1}}, "Unknown keys in 'benchmark': ['epochs']"),
        ({"benchmark": {"model": {"grid": []}, "data": "default"}}, "'benchmark.model.grid' is empty"),
        ({"benchmark": {"model": {"init_args": {}}, "data": "default"}}, "needs a 'class_path'"),
        ({"benchmark": {"model": PADIM, "data": "default", "seed": "x"}}, "'benchmark.seed' values must be integers"),
        ({"isolation": "thread", "benchmark": {"model": PADIM, "data": "default"}}, "'isolation' must be one of"),
        ({"accelerator": "tpu", "benchmark": {"model": PADIM, "data": "default"}}, "Unsupported accelerator 'tpu'"),
        ({"n_jobs": 0, "benchmark": {"model": PADIM, "data": "default"}}, "'n_jobs' must be a positive integer"),
        ({"image_size": 4, "benchmark": {"model": PADIM, "data": "default"}}, "'image_size' must be an integer >= 8"),
        ({"exclude": [{"modell": "Pae"}], "benchmark": {"model": PADIM, "data": "default"}}, "['modell'] in 'exclude'"),
        ({"exclude": {"model": "Pae"}, "benchmark": {"model": PADIM, "data": "default"}}, "'exclude' must be a list"),
        ({"benchmark": {"model": {"grid": [PADIM, PADIM]}, "data": "default"}}, "share the label(s) ['padim']"),
        ({"benchmark": {"model": {**PADIM, "name": ""}, "data": "default"}}, "'name' must be a non-empty string"),
        (
            {
                "benchmark": {
                    "model": PADIM,
                    "post_processor": {"grid": ["f2pad", {"class_path": "f2pad"}]},
                    "data": "x",
                }
            },
            "'benchmark.post_processor' entries share the label(s) ['f2pad']",
        ),
    ],
)
def test_bad_configuration_names_the_problem(config: dict, message: str) -> None:
    with pytest.raises(BenchmarkConfigError) as error:
        load_config(config)
    assert message in str(error.value)


def test_bad_configuration_files(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(BenchmarkConfigError, match="must be a mapping"):
        load_config(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("benchmark: [unclosed\n")
    with pytest.raises(BenchmarkConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(BenchmarkConfigError, match="--quick"):
        load_config(None)


def test_missing_model_is_skipped_and_unknown_names_fail_the_job_only(tiny_mvtec_root: Path) -> None:
    def run(model: object, post_processor: str = "default", data: object = None) -> dict:
        data = data or _mvtec(tiny_mvtec_root)
        job_config = {"model": model, "post_processor": post_processor, "data": data, "engine": {}}
        return PixelRefineBenchmarkJob("cpu", 0, job_config).run()

    row = run({"class_path": "anomalib_pixelrefine.models.image.nothere.NotThere"})
    assert row["status"] == "skipped"
    assert "nothere" in row["reason"]
    row = run({"class_path": "NoSuchModel"})
    assert row["status"] == "failed"
    assert "Unknown model 'NoSuchModel'" in row["reason"]
    row = run(PADIM, post_processor="nosuch")
    assert row["status"] == "failed"
    assert "Unknown post-processor 'nosuch'" in row["reason"]
    row = run(PADIM, data={"class_path": "NoSuchData"})
    assert "Unknown data set 'NoSuchData'" in row["reason"]


def test_cli_benchmark_command_uses_our_pipeline_and_keeps_anomalibs(tmp_path: Path) -> None:
    from anomalib_pixelrefine.cli import PixelRefineCLI

    with pixelrefine_pipelines():
        assert anomalib_pipelines.PIPELINE_REGISTRY["benchmark"] is PixelRefineBenchmark
    assert anomalib_pipelines.PIPELINE_REGISTRY["benchmark"] is Benchmark

    cli = PixelRefineCLI(["benchmark", "--quick", "--output_dir", str(tmp_path)], run=False)
    assert cli.config["benchmark"]["quick"] is True
    assert anomalib_pipelines.PIPELINE_REGISTRY["benchmark"] is Benchmark
    with pytest.raises(SystemExit, match="pixelrefine benchmark: error: Benchmark configuration file not found"):
        PixelRefineCLI(["benchmark", "--config", str(tmp_path / "missing.yaml")])
    assert anomalib_pipelines.PIPELINE_REGISTRY["benchmark"] is Benchmark


def test_dice_vs_size_bins_by_area(tmp_path: Path) -> None:
    per_image = pd.DataFrame(
        {
            "model": ["A"] * 4,
            "post_processor": ["default"] * 4,
            "area_fraction": [0.0, 0.003, 0.004, 0.2],
            "dice": [float("nan"), 0.2, 0.4, 0.9],
        }
    )
    path = plot_dice_vs_size(per_image, tmp_path / "size.png")
    assert path is not None
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert plot_dice_vs_size(per_image.iloc[:1], tmp_path / "none.png") is None  # only a normal image


@pytest.mark.slow
def test_fresh_process_isolation_runs_each_job_in_its_own_process(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    config = {
        "isolation": "process",
        "output_dir": str(tmp_path / "out"),
        "image_size": 64,
        "qualitative_samples": 0,
        "benchmark": {"seed": {"grid": [0, 1]}, "model": PADIM, "data": _mvtec(tiny_mvtec_root)},
    }
    frame = run_benchmark(config)
    assert list(frame["status"]) == ["ok", "ok"]
    assert frame["pid"].nunique() == 2
    assert (frame["peak_rss_mb"] >= frame["rss_start_mb"]).all()
    # Every finished row is kept at once; an interrupted run resumes without re-running them.
    partial = tmp_path / "out" / "rows.partial.jsonl"
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert sorted(row["job_id"] for row in rows) == sorted(frame["job_id"])
    partial.write_text(json.dumps(rows[0]) + "\n")  # as if the run had stopped after the first job
    resumed = run_benchmark({**config, "resume": True}).set_index("job_id")
    assert resumed.loc[rows[0]["job_id"], "pid"] == rows[0]["pid"]  # kept, not run again
    assert resumed.loc[rows[1]["job_id"], "pid"] not in {row["pid"] for row in rows}  # run again


# ---------------------------------------------------------------------------------- issue 29, item 5: the runner
@pytest.mark.parametrize(
    ("bench", "message"),
    [
        ({"model": {"class_path": "Padim", "init_arg": {}}}, "Unknown key 'init_arg' in 'benchmark.model' entry"),
        ({"model": {"class_path": "Padim", "init_args": {"backbon": "resnet18"}}}, "Unknown key 'backbon'"),
        ({"model": "NoSuchModel"}, "Unknown model 'NoSuchModel'"),
        ({"model": {"class_path": "Padim", "engine": {"max_epoch": 1}}}, "Unknown key 'max_epoch'"),
        ({"engine": {"max_epoch": 1}}, "Unknown key 'max_epoch' in 'benchmark.engine'"),
        ({"post_processor": {"class_path": "f2pad", "init_args": {"max_iter": 5}}}, "Unknown key 'max_iter'"),
        ({"post_processor": {"grid": ["default", "nosuch"]}}, "Unknown post-processor 'nosuch'"),
        ({"data": {"class_path": "default", "init_args": {"categroy": "brick"}}}, "Unknown key 'categroy'"),
        ({"data": {"class_path": "MVTecAD", "init_args": {"catgory": "x"}}}, "Unknown key 'catgory'"),
        ({"data": "NoSuchData"}, "Unknown data set 'NoSuchData'"),
        (
            {"model": {"class_path": "FeatureEnsemble", "init_args": {"members": [{"backbone": "x", "layer": ["a"]}]}}},
            "Unknown keys ['layer'] in backbone member",
        ),
    ],
)
def test_unknown_keys_and_names_are_refused_ahead_of_any_job(tmp_path: Path, bench: dict, message: str) -> None:
    config = {"output_dir": str(tmp_path / "out"), "benchmark": {"model": PADIM, "data": "default", **bench}}
    with pytest.raises(BenchmarkConfigError) as error:
        run_benchmark(config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing ran


def _tiny_config(root: Path, out: Path) -> dict:
    return _in_process_config(out, {"seed": 0, "model": PADIM, "data": _mvtec(root)})


def test_in_process_runs_keep_partial_rows_and_resume_skips_bad_lines(
    tiny_mvtec_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _tiny_config(tiny_mvtec_root, tmp_path / "out")
    frame = run_benchmark(config)
    partial = tmp_path / "out" / "rows.partial.jsonl"
    rows = [json.loads(line) for line in partial.read_text().splitlines()]  # written with isolation "none" too
    assert [row["job_id"] for row in rows] == list(frame["job_id"])
    # A cut last line and garbage (e.g. a run killed while writing): skipped with a warning, the good row is kept.
    partial.write_text("not json\n" + json.dumps(rows[0]) + "\n[1, 2]\n" + json.dumps(rows[0])[:40])
    with caplog.at_level("WARNING"):
        resumed = run_benchmark({**config, "resume": True})
    assert "Skipped 3 line(s)" in caplog.text
    assert resumed.loc[0, "job_s"] == rows[0]["job_s"]  # the kept row, not a new run


def test_output_folder_is_locked_and_a_users_results_are_refused(tmp_path: Path) -> None:
    from anomalib_pixelrefine.benchmark.pipeline import OutputDirError, claim_output_dir

    with (
        claim_output_dir(tmp_path / "out"),
        pytest.raises(OutputDirError, match="Another pixelrefine run"),
        claim_output_dir(tmp_path / "out"),
    ):
        pass
    with claim_output_dir(tmp_path / "out"):  # released: ours, and free again
        pass
    user = tmp_path / "mine" / "results.csv"
    user.parent.mkdir()
    user.write_text("my numbers")
    with pytest.raises(OutputDirError, match="did not write") as error, claim_output_dir(user.parent):
        pass
    assert str(user) in str(error.value)
    assert user.read_text() == "my numbers"


def test_cli_benchmark_exits_non_zero_in_one_line_when_a_job_fails_or_the_folder_is_locked(tmp_path: Path) -> None:
    import subprocess
    import sys

    from anomalib_pixelrefine.benchmark.pipeline import claim_output_dir

    config = _tiny_config(tmp_path / "missing_root", tmp_path / "out")  # the data set does not exist: the job fails
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "anomalib_pixelrefine.cli", "benchmark", "--config", str(path)]
    out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("pixelrefine benchmark: error: 1 job(s) failed")
    assert (tmp_path / "out" / "results.csv").is_file()  # the results are still written
    with claim_output_dir(tmp_path / "out"):
        out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("pixelrefine benchmark: error: Another pixelrefine run")
    assert "Traceback" not in out.stderr
