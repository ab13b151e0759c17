"""PNI ablation (baseline / +N / +N+P / +N+P+R) vs anomalib's PatchCore on the embedded default benchmark.

Same backbone (resnet18, random weights: ``pre_trained=False``, no downloads), layers 2+3, resolution and coreset
ratio for both models. One PNI model is trained per category (coresets, MLP, histograms, refinement); the four
ablation rows evaluate it with the components switched on one by one (``use_neighbourhood``, ``use_position``,
refinement), so the rows differ only in the scoring. Each (model, category) runs in its own subprocess so that the
peak RSS is per run. Metrics are computed on the raw maps of the whole test split: image AUROC, pixel AUROC, AUPRO
(FPR <= 0.3) and the best-threshold Dice.

Usage:
    python benchmarks/pni_benchmark.py [--image-size 128] [--categories brick grass gravel elpv] [--threads 1]
        [--seeds 0 1 2]

With several seeds, each seed builds its own data (same backgrounds, new split and defects) and trains its own models;
the tables report the mean over seeds and a per-seed comparison of the full PNI with PatchCore.

The categories default to ``anomalib_pixelrefine.data.DEFAULT_CATEGORIES`` (the three scikit-image textures + ELPV).
The "+N" diagnostics (``n_diagnostics`` in the JSON) explain how much the neighbourhood mask changes the scores.

Writes benchmarks/results/pni.{json,md}.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from anomalib_pixelrefine.data.folder import DEFAULT_CATEGORIES

ABLATIONS = {
    "pni (no N/P/R)": {"use_neighbourhood": False, "use_position": False, "refine": False},
    "pni +N": {"use_neighbourhood": True, "use_position": False, "refine": False},
    "pni +N+P": {"use_neighbourhood": True, "use_position": True, "refine": False},
    "pni +N+P+R": {"use_neighbourhood": True, "use_position": True, "refine": True},
    # Scoring-time variants of the full model. The rows above join N and P as the paper's eq. (6) does (mean of
    # the probabilities, thresholded once: ``combine="probability"``, the default) and keep the border
    # (``border=0``). ``border 1``: the public PNI code's edge padding of the outer ring of the N/P map.
    # ``public-code combine``: that code's mean of the N- and P-masked scores (``combine="score"``).
    "pni +N+P+R, border 1": {"use_neighbourhood": True, "use_position": True, "refine": True, "border": 1},
    "pni +N+P, public-code combine": {
        "use_neighbourhood": True,
        "use_position": True,
        "refine": False,
        "combine": "score",
    },
    "pni +N+P+R, public-code combine": {
        "use_neighbourhood": True,
        "use_position": True,
        "refine": True,
        "combine": "score",
    },
}
FULL_CONFIGS = ("pni +N+P+R", "pni +N+P+R, public-code combine")  # compared with PatchCore


def evaluate(predict, datamodule) -> dict:
    """Collect raw maps over the test split, time the model, compute the metrics."""
    import torch
    from anomalib.metrics.aupro import _AUPRO
    from sklearn.metrics import roc_auc_score

    from anomalib_pixelrefine.metrics import best_threshold_dice

    maps, scores, masks, labels = [], [], [], []
    seconds, count = 0.0, 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            start = time.perf_counter()
            out = predict(batch.image)
            seconds += time.perf_counter() - start
            count += len(batch.image)
            maps.append(out.anomaly_map.reshape(len(batch.image), *batch.image.shape[-2:]).float())
            scores.append(out.pred_score.reshape(-1).float())
            masks.append(batch.gt_mask.reshape(len(batch.image), *batch.image.shape[-2:]).int())
            labels.append(batch.gt_label.reshape(-1).int())
    maps, scores, masks, labels = torch.cat(maps), torch.cat(scores), torch.cat(masks), torch.cat(labels)
    aupro = _AUPRO(fpr_limit=0.3)
    aupro.update(maps, masks)
    return {
        "image_scores": scores.tolist(),  # kept for the paired bootstrap of the image AUROC difference
        "image_labels": labels.tolist(),
        "image_AUROC": float(roc_auc_score(labels.numpy(), scores.numpy())),
        "pixel_AUROC": float(roc_auc_score(masks.reshape(-1).numpy(), maps.reshape(-1).numpy())),
        "AUPRO": float(aupro.compute()),
        "best_Dice": float(best_threshold_dice(maps, masks)[0]),
        "inference_ms_per_image": 1000 * seconds / max(count, 1),
    }


def neighbourhood_diagnostics(model, datamodule) -> dict:
    """Why N does (or does not) change the scores: statistics of ``p(c | N)`` and of the N-masked search.

    Computed with the first backbone on the test split (diagnostics only; nothing is selected with them). Patches
    are "anomalous" when more than half of their cell is inside the ground-truth mask, "normal" when none of it is.
    """
    import math

    import torch
    import torch.nn.functional as F

    from anomalib_pixelrefine.models.image.pni.torch_model import nearest_neighbour

    scorer = model.model.scorers[0]
    stats = {key: [] for key in ("top1", "entropy", "allowed", "full", "nn_allowed", "rel_delta", "density")}
    labels = []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            image = model.pre_processor.transform(batch.image)
            features = scorer.extract(model.model.normalise_image(image))
            height, width = features.shape[-2:]
            mask = batch.gt_mask.reshape(len(image), 1, *batch.gt_mask.shape[-2:]).float()
            labels.append(F.adaptive_avg_pool2d(mask, (height, width)).reshape(-1))
            patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
            probs = scorer.neighbourhood_probabilities(features)
            allowed = probs > scorer.tau
            plain, nearest = nearest_neighbour(patches, scorer.embedding_coreset)
            target = nearest_neighbour(patches, scorer.embedding_coreset[: scorer.n_dist])[1]
            masked = scorer.masked_nearest(patches, allowed)
            rows = torch.arange(len(patches))
            stats["top1"].append((probs.argmax(1) == target).float())
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(max(scorer.n_dist, 2))
            stats["entropy"].append(entropy)
            stats["allowed"].append(allowed.float().mean(1))
            stats["full"].append(allowed.all(1).float())
            stats["nn_allowed"].append(allowed[rows, scorer.emb_to_dist[nearest]].float())
            stats["rel_delta"].append((masked - plain) / plain.clamp_min(1e-12))
            stats["density"].append(torch.full((len(patches),), scorer.last_density))
    cells = torch.cat(labels)
    values = {key: torch.cat(v) for key, v in stats.items()}
    out = {
        "tau": scorer.tau,
        "full_set_fraction": float(values["full"].mean()),
        "allowed_class_fraction": float(values["allowed"].mean()),
        "allowed_pair_fraction": float(values["density"].mean()),
    }
    for name, selected in (("normal", cells == 0), ("anomalous", cells > 0.5)):
        out[f"n_{name}_patches"] = int(selected.sum())
        out[f"mlp_top1_{name}"] = float(values["top1"][selected].mean())
        out[f"entropy_norm_{name}"] = float(values["entropy"][selected].mean())
        out[f"nn_class_allowed_{name}"] = float(values["nn_allowed"][selected].mean())
        out[f"score_rel_increase_{name}"] = float(values["rel_delta"][selected].mean())
        excluded = selected & (values["nn_allowed"] == 0)  # nearest entry's class masked out by N
        out[f"n_{name}_nn_excluded"] = int(excluded.sum())
        out[f"score_rel_increase_{name}_if_excluded"] = (
            float(values["rel_delta"][excluded].mean()) if excluded.any() else 0.0
        )
    return out


def run_worker(args: argparse.Namespace) -> list[dict]:
    """Train one model on one category in this process and evaluate it (all ablations for PNI)."""
    import torch
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from lightning.pytorch import seed_everything

    from anomalib_pixelrefine.data import build_default_benchmark, default_datamodule
    from anomalib_pixelrefine.models.image.pni import Pni

    torch.set_num_threads(args.threads)
    root = Path(args.root) / f"seed{args.seed}"
    paths = build_default_benchmark(
        root,
        categories=[args.category],
        image_size=args.image_size,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        seed=args.seed,
    )
    seed_everything(args.seed)
    size = (args.image_size, args.image_size)
    datamodule = default_datamodule(paths[args.category], train_batch_size=8, eval_batch_size=8, seed=args.seed)
    datamodule.setup()
    engine = Engine(
        accelerator="cpu",
        devices=1,
        default_root_dir=Path(args.root) / "_pni_results",
        logger=False,
        enable_progress_bar=False,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.model == "patchcore":
        model = Patchcore(
            backbone="resnet18",
            pre_trained=False,
            coreset_sampling_ratio=args.coreset_ratio,
            pre_processor=Patchcore.configure_pre_processor(image_size=size),
            visualizer=False,
        )
    else:
        model = Pni(
            backbone="resnet18",
            pre_trained=False,
            coreset_ratio=args.coreset_ratio,
            distribution_size=args.distribution_size,
            window=args.window,
            mlp_layers=args.mlp_layers,
            mlp_width=args.mlp_width,
            mlp_channels=args.mlp_channels,
            mlp_epochs=args.mlp_epochs,
            mlp_batch_size=args.mlp_batch_size,
            mlp_step_size=max(1, args.mlp_epochs * 2 // 3),
            refine_epochs=args.refine_epochs,
            refine_channels=args.refine_channels,
            pre_processor=Pni.configure_pre_processor(size),
            visualizer=False,
        )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    common = {
        "category": args.category,
        "seed": args.seed,
        "fit_seconds": fit_seconds,
        "train_peak_rss_mb": peak_rss,
        "rss_before_fit_mb": rss_before,
    }
    if args.model == "patchcore":
        metrics = evaluate(lambda image: model.model(model.pre_processor.transform(image)), datamodule)
        return [{"config": "patchcore (anomalib)", **common, **metrics}]

    # Inference time: PNI configs and a PatchCore trained in this process, timed interleaved batch by batch
    # (best of 3), so that the load of a shared machine hits all of them alike.
    patchcore = Patchcore(
        backbone="resnet18",
        pre_trained=False,
        coreset_sampling_ratio=args.coreset_ratio,
        pre_processor=Patchcore.configure_pre_processor(image_size=size),
        visualizer=False,
    )
    Engine(  # a fresh trainer: the PNI one has reached its max_epochs
        accelerator="cpu",
        devices=1,
        default_root_dir=Path(args.root) / "_pni_results",
        logger=False,
        enable_progress_bar=False,
    ).fit(model=patchcore, datamodule=datamodule)
    patchcore.eval()
    refiner = model.model.refiner

    def configure(switches: dict) -> None:
        for scorer in model.model.scorers:
            scorer.use_neighbourhood = switches["use_neighbourhood"]
            scorer.use_position = switches["use_position"]
            scorer.border = switches.get("border", 0)
            scorer.combine = switches.get("combine", "probability")
        model.model.refiner = refiner if switches["refine"] else None

    def pni_predict(image):
        return model.model(model.pre_processor.transform(image))

    seconds = dict.fromkeys(["patchcore", *ABLATIONS], 0.0)
    count = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            count += len(batch.image)
            for name in seconds:
                best = float("inf")
                for _ in range(3):
                    if name != "patchcore":
                        configure(ABLATIONS[name])
                    start = time.perf_counter()
                    if name == "patchcore":
                        patchcore.model(patchcore.pre_processor.transform(batch.image))
                    else:
                        pni_predict(batch.image)
                    best = min(best, time.perf_counter() - start)
                seconds[name] += best
    patchcore_ms = 1000 * seconds["patchcore"] / count

    rows = []
    for name, switches in ABLATIONS.items():
        configure(switches)
        metrics = evaluate(pni_predict, datamodule)
        metrics["inference_ms_per_image"] = 1000 * seconds[name] / count
        rows.append(
            {
                "config": name,
                **common,
                **metrics,
                "patchcore_ms_per_image_interleaved": patchcore_ms,
                "time_ratio_vs_patchcore": metrics["inference_ms_per_image"] / patchcore_ms,
            }
        )
    configure(ABLATIONS["pni +N"])
    rows[0]["n_diagnostics"] = neighbourhood_diagnostics(model, datamodule)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/pni_benchmark_data")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for both models)")
    parser.add_argument("--n-test-good", type=int, default=40, help="normal test images per category and seed")
    parser.add_argument("--n-test-defect", type=int, default=10, help="test images per defect kind (4 kinds)")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--distribution-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--mlp-layers", type=int, default=3)
    parser.add_argument("--mlp-width", type=int, default=256)
    parser.add_argument("--mlp-channels", type=int, default=32)
    parser.add_argument("--mlp-epochs", type=int, default=8)
    parser.add_argument("--mlp-batch-size", type=int, default=256)
    parser.add_argument("--refine-epochs", type=int, default=40, help="until the refinement loss levels off")
    parser.add_argument("--refine-channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="data/model seeds (results averaged)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pni"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)))
        return

    settings = {k: v for k, v in vars(args).items() if k not in {"worker", "model", "category", "seed", "out", "root"}}
    worker_args = []
    for key, value in settings.items():
        if key not in {"categories", "seeds"}:
            worker_args += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    settings["command"] = " ".join(["python", *sys.argv])
    settings["load_average_start"] = list(os.getloadavg())
    rows = []
    total_start = time.perf_counter()
    for seed, category in ((seed, category) for seed in args.seeds for category in args.categories):
        for model in ("patchcore", "pni"):
            cmd = [sys.executable, __file__, "--worker", "--model", model, "--category", category, *worker_args]
            cmd += ["--root", args.root, "--seed", str(seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(proc.stderr[-3000:], file=sys.stderr)
                msg = f"run {model}/{category} failed"
                raise RuntimeError(msg)
            for row in json.loads(lines[-1][len("RESULT ") :]):
                if "patchcore_ms_per_image_interleaved" in row:  # PatchCore timed next to PNI: use that time
                    for other in rows:
                        same_run = other["category"] == category and other.get("seed", 0) == seed
                        if same_run and other["config"].startswith("patchcore"):
                            other["inference_ms_own_process"] = other["inference_ms_per_image"]
                            other["inference_ms_per_image"] = row["patchcore_ms_per_image_interleaved"]
                            other["time_ratio_vs_patchcore"] = 1.0
                print(json.dumps(row), flush=True)
                rows.append(row)
    settings["total_minutes"] = (time.perf_counter() - total_start) / 60
    settings["load_average_end"] = list(os.getloadavg())
    settings["cpu_count"] = os.cpu_count()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=2))
    out.with_suffix(".md").write_text(to_markdown(settings, rows))
    print(out.with_suffix(".md").read_text())


def to_markdown(settings: dict, rows: list[dict]) -> str:
    """One table per category plus the mean over categories."""
    keys = ["image_AUROC", "pixel_AUROC", "AUPRO", "best_Dice"]
    lines = [f"Settings: {json.dumps(settings)}", ""]
    header = "| category | config | I-AUROC | P-AUROC | AUPRO | best Dice | infer ms/img | x PatchCore | fit s |"
    header += " train peak RSS MB |"
    lines += [header, "|" + "---|" * 10]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    categories = list(dict.fromkeys(r["category"] for r in rows))
    for category in [*categories, "mean"]:
        for config in configs:
            runs = [r for r in rows if r["config"] == config and (category == "mean" or r["category"] == category)]
            if not runs:
                continue

            def mean(key: str, runs: list[dict] = runs) -> float:
                return sum(r[key] for r in runs) / len(runs)

            cells = " | ".join(f"{mean(k):.3f}" for k in keys)
            lines.append(
                f"| {category} | {config} | {cells} | {mean('inference_ms_per_image'):.1f}"
                f" | {mean('time_ratio_vs_patchcore'):.2f} | {mean('fit_seconds'):.0f}"
                f" | {max(r['train_peak_rss_mb'] for r in runs):.0f} |"
            )
    before = max(r.get("rss_before_fit_mb", 0.0) for r in rows)
    lines += [
        "",
        f"Peak RSS: whole worker process (RSS before fit, after imports and data set-up: <= {before:.0f} MB).",
        "Inference times: PatchCore and the PNI rows timed interleaved, batch by batch, in the same process.",
    ]
    lines += contribution_lines(rows, keys, categories) + diagnostics_lines(rows)
    return "\n".join(lines) + "\n"


def contribution_lines(rows: list[dict], keys: list[str], categories: list[str]) -> list[str]:
    """Per-component deltas (4 decimals) and the target check (full PNI >= PatchCore on every metric)."""
    steps = [
        ("N", "pni +N", "pni (no N/P/R)"),
        ("P", "pni +N+P", "pni +N"),
        ("R", "pni +N+P+R", "pni +N+P"),
        ("PNI - PatchCore", "pni +N+P+R", "patchcore (anomalib)"),
        ("P, public-code combine", "pni +N+P, public-code combine", "pni +N"),
        ("R, public-code combine", "pni +N+P+R, public-code combine", "pni +N+P, public-code combine"),
        ("PNI, public-code combine - PatchCore", "pni +N+P+R, public-code combine", "patchcore (anomalib)"),
    ]
    lines = ["", "Component contributions (metric differences, 4 decimals):", ""]
    lines += ["| category | step | " + " | ".join(keys) + " | target met |", "|" + "---|" * (len(keys) + 3)]
    for category in categories:
        by_config = {}  # config -> metric means over the seeds
        for config in dict.fromkeys(r["config"] for r in rows if r["category"] == category):
            runs = [r for r in rows if r["category"] == category and r["config"] == config]
            by_config[config] = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
        for step, new, old in steps:
            if new not in by_config or old not in by_config:
                continue
            deltas = [by_config[new][k] - by_config[old][k] for k in keys]
            met = "yes" if all(d >= 0 for d in deltas) else "no"
            cells = " | ".join(f"{d:+.4f}" for d in deltas)
            lines.append(f"| {category} | {step} | {cells} | {met if step.startswith('PNI') else ''} |")
    seeds = sorted({r.get("seed", 0) for r in rows})
    for full in FULL_CONFIGS if len(seeds) > 1 else ():
        lines += ["", f"Full PNI ({full}) minus PatchCore per seed:", ""]
        lines += ["| category | seed | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
        for category in categories:
            for seed in seeds:
                run = {r["config"]: r for r in rows if r["category"] == category and r.get("seed", 0) == seed}
                if full in run and "patchcore (anomalib)" in run:
                    deltas = [run[full][k] - run["patchcore (anomalib)"][k] for k in keys]
                    lines.append(f"| {category} | {seed} | " + " | ".join(f"{d:+.4f}" for d in deltas) + " |")
    return lines + [line for full in FULL_CONFIGS for line in bootstrap_lines(rows, categories, full)]


def paired_bootstrap_auroc_delta(
    runs: list[tuple[list[int], list[float], list[float]]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over runs of AUROC(b) - AUROC(a), with a 95 % paired bootstrap interval over the test images.

    Args:
        runs: Per seed ``(labels, scores_a, scores_b)`` on the same test images; each bootstrap replicate resamples
            the normal and the anomalous images of every run (stratified, the same images for ``a`` and ``b``).
        n_boot: Bootstrap replicates.
        seed: Resampling seed.

    Returns:
        ``(delta, low, high)``.
    """
    import numpy as np

    def auroc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """AUROC of every row of ``scores`` (Mann-Whitney with ties counted half)."""
        pos, neg = scores[:, labels == 1], scores[:, labels == 0]
        greater = (pos[:, :, None] > neg[:, None, :]).mean((1, 2))
        ties = (pos[:, :, None] == neg[:, None, :]).mean((1, 2))
        return greater + 0.5 * ties

    rng = np.random.default_rng(seed)
    point, boot = 0.0, np.zeros(n_boot)
    for labels, scores_a, scores_b in runs:
        labels, both = np.asarray(labels), np.stack([scores_a, scores_b])
        point += float(np.diff(auroc(labels, both))[0]) / len(runs)
        index = np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), (n_boot, int((labels == c).sum()))) for c in (0, 1)], axis=1
        )
        sampled = both[:, index]  # (2, n_boot, n)
        delta = auroc(labels[index[0]], sampled[1]) - auroc(labels[index[0]], sampled[0])
        boot += delta / len(runs)
    low, high = np.percentile(boot, [2.5, 97.5])
    return point, float(low), float(high)


def bootstrap_lines(rows: list[dict], categories: list[str], full: str = "pni +N+P+R") -> list[str]:
    """Full PNI minus PatchCore image AUROC with a paired bootstrap interval (is a gap larger than the noise?)."""
    lines = [
        "",
        f"Image AUROC, full PNI ({full}) minus PatchCore, mean over seeds with a 95 % paired bootstrap interval (test "
        "images resampled per seed, stratified):",
        "",
        "| category | normal / anomalous test images per seed | delta | 95 % interval |",
        "|---|---|---|---|",
    ]
    for category in categories:
        runs = []
        for seed in sorted({r.get("seed", 0) for r in rows}):
            run = {r["config"]: r for r in rows if r["category"] == category and r.get("seed", 0) == seed}
            a, b = run.get("patchcore (anomalib)"), run.get(full)
            if a is None or b is None or "image_scores" not in a or a["image_labels"] != b["image_labels"]:
                continue
            runs.append((a["image_labels"], a["image_scores"], b["image_scores"]))
        if runs:
            delta, low, high = paired_bootstrap_auroc_delta(runs)
            n_bad = sum(runs[0][0])
            lines.append(
                f"| {category} | {len(runs[0][0]) - n_bad} / {n_bad} | {delta:+.4f} | [{low:+.4f}, {high:+.4f}] |"
            )
    return lines


def diagnostics_lines(rows: list[dict]) -> list[str]:
    """Table of the neighbourhood-term diagnostics (see :func:`neighbourhood_diagnostics`)."""
    first_seed = min((r.get("seed", 0) for r in rows), default=0)
    diags = [
        (r["category"], r["n_diagnostics"]) for r in rows if "n_diagnostics" in r and r.get("seed", 0) == first_seed
    ]
    if not diags:
        return []
    lines = [
        "",
        f"N diagnostics (seed {first_seed}, test split, first backbone; normal = patch cell outside the mask, "
        "anomalous = > 50 % inside):",
        "",
        "| category | full set | allowed classes | allowed pairs | MLP top-1 n/a | entropy / log(C) n/a"
        " | NN class allowed n/a | score increase n/a | increase if NN class excluded n/a |",
        "|" + "---|" * 9,
    ]
    for category, d in diags:
        lines.append(
            f"| {category} | {d['full_set_fraction']:.3f} | {d['allowed_class_fraction']:.3f}"
            f" | {d['allowed_pair_fraction']:.3f}"
            f" | {d['mlp_top1_normal']:.2f} / {d['mlp_top1_anomalous']:.2f}"
            f" | {d['entropy_norm_normal']:.2f} / {d['entropy_norm_anomalous']:.2f}"
            f" | {d['nn_class_allowed_normal']:.3f} / {d['nn_class_allowed_anomalous']:.3f}"
            f" | {100 * d['score_rel_increase_normal']:.3f} % / {100 * d['score_rel_increase_anomalous']:.3f} %"
            f" | {100 * d['score_rel_increase_normal_if_excluded']:.1f} %"
            f" / {100 * d['score_rel_increase_anomalous_if_excluded']:.1f} % |"
        )
    return lines


if __name__ == "__main__":
    main()
