"""``pixelrefine`` command line interface.

The command is anomalib's own CLI (``anomalib.cli.AnomalibCLI``) with this package imported first, so the short
names of our models (``--model Pni``) resolve like anomalib's, and with these additions:

* ``--post_processor NAME``: a top-level alias that sets the model's post-processor, e.g. ``--post_processor f2pad``
  for ``--model.post_processor anomalib_pixelrefine.post_processing.F2PAD``. Options of the post-processor are passed
  as ``--post_processor.<option> value``.
* ``pixelrefine demo``: builds the embedded default data set and trains/tests a model on it (no network needed).
* ``pixelrefine weights``: lists / installs offline ImageNet weights (EfficientNet-Lite0/1/2) for timm.
* ``pixelrefine benchmark``: runs the benchmark grid (models x post-processors x data sets x seeds).

Example:
    .. code-block:: bash

        pixelrefine train --model Pni --data Folder --data.name tile --data.root ./datasets/tile ...
        pixelrefine test --model Patchcore --post_processor f2pad --data MVTecAD --ckpt_path model.ckpt
        pixelrefine demo --model Padim
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.cli import AnomalibCLI
from anomalib.cli.utils.help_formatter import REQUIRED_ARGUMENTS, CustomHelpFormatter
from jsonargparse import ActionConfigFile, ArgumentParser

# Importing the models registers them as ``AnomalibModule`` subclasses, which is what makes ``--model Pni`` resolve.
from anomalib_pixelrefine import models as _models
from anomalib_pixelrefine import registry
from anomalib_pixelrefine.errors import InvalidArgumentError

logger = logging.getLogger("anomalib_pixelrefine.cli")

# Short names accepted by ``--post_processor`` and the classes they stand for (``registry.POST_PROCESSORS``).
POST_PROCESSORS = registry.POST_PROCESSORS

# Commands whose parser has a ``--model`` argument, i.e. where ``--post_processor`` makes sense.
_MODEL_COMMANDS = {"fit", "validate", "test", "train", "predict", "export"}


def _our_model_names() -> list[str]:
    return sorted(name for name in getattr(_models, "__all__", []) if name[0].isupper())


_DESCRIPTION = (
    "anomalib's CLI with the anomalib-pixelrefine models and refiners. "
    f"Models added by this package: {', '.join(_our_model_names()) or '(none)'} "
    "(all anomalib models work too). "
    f"Post-processors (--post_processor NAME): {', '.join(POST_PROCESSORS)}. "
    "Extra commands: 'demo' (train/test on the embedded default data, offline) and 'benchmark'."
)


class PixelRefineHelpFormatter(CustomHelpFormatter):
    """anomalib's help formatter with this package's models and post-processors listed first.

    anomalib's formatter shows only a quick-start guide for ``train``/``fit``/``test``/... at the default verbosity,
    so the parser description (where ``pixelrefine --help`` lists our models) would not be shown there.
    """

    def _get_help_string(self, action: Any) -> str:
        # jsonargparse adds "type: %(type)s", but rich-argparse (anomalib's formatter) expands it from ``action.type``,
        # which is None for type-hinted arguments: the help said "(type: None, ...)". Leave the type out there.
        text = super()._get_help_string(action)
        if getattr(action, "type", None) is None:
            text = text.replace("type: %(type)s, ", "").replace(", type: %(type)s", "").replace("type: %(type)s", "")
        return text

    def format_help(self) -> str:
        """Return anomalib's help, preceded by our models and post-processors where anomalib shows only its guide."""
        help_text = super().format_help()
        if self.subcommand in REQUIRED_ARGUMENTS and self.verbosity_level in {0, 1}:
            return f"{textwrap.fill(_DESCRIPTION, width=80, break_on_hyphens=False)}\n\n{help_text}"
        return help_text


def translate_post_processor_args(args: Sequence[str]) -> list[str]:
    """Rewrite the ``--post_processor`` alias into anomalib's ``--model.post_processor`` arguments.

    ``--post_processor f2pad`` becomes ``--model.post_processor <class path>`` and ``--post_processor.<opt> v``
    becomes ``--model.post_processor.init_args.<opt> v`` (options without a name apply to ``decision``, e.g.
    ``--post_processor.max_false_alarm_rate 0.01``). Both are moved to the end of the arguments, after
    ``--model``, so jsonargparse applies them to the chosen model.

    Args:
        args: Command line arguments without the program name.

    Returns:
        The rewritten arguments.

    Raises:
        InvalidArgumentError: (a ``ValueError``) If the alias is given without a value, with an unknown name, or with
            a command that has no model.
    """
    args = list(args)
    if "demo" in args:  # the demo takes ``--post_processor NAME`` itself
        return args
    kept: list[str] = []
    moved: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        key, has_eq, inline_value = arg.partition("=")
        if key == "--post_processor" or key.startswith("--post_processor."):
            if has_eq:
                value = inline_value
            elif index + 1 < len(args):
                index += 1
                value = args[index]
            else:
                msg = f"'{key}' needs a value."
                raise InvalidArgumentError(msg)
            if key == "--post_processor":
                moved[:0] = ["--model.post_processor", registry.post_processor_path(value)]
            else:
                option = key.removeprefix("--post_processor.")
                moved += [f"--model.post_processor.init_args.{option}", value]
        else:
            kept.append(arg)
        index += 1
    if moved and moved[0] != "--model.post_processor":  # options alone: they apply to the decision post-processor
        moved[:0] = ["--model.post_processor", registry.post_processor_path("decision")]
    if moved and not _MODEL_COMMANDS.intersection(kept):
        commands = sorted(_MODEL_COMMANDS)
        msg = f"--post_processor needs one of the commands {commands} (it sets the model's post-processor)."
        raise InvalidArgumentError(msg)
    return kept + moved


def translate_model_args(args: Sequence[str]) -> list[str]:
    """Rewrite ``--model NAME`` short names of the registry (any case, ``pni``, ``feature_ensemble``) to class paths.

    Class paths, config files and unknown names are left to jsonargparse. ``demo`` arguments are left untouched:
    the demo takes the short name itself and applies its own offline settings to it.

    Args:
        args: Command line arguments without the program name.

    Returns:
        The rewritten arguments.
    """
    args = list(args)
    if "demo" in args:  # as for ``--post_processor``: the demo resolves ``--model NAME`` itself
        return args
    for index, arg in enumerate(args):
        key, has_eq, value = arg.partition("=")
        if key != "--model":
            continue
        if not has_eq:
            if index + 1 >= len(args):
                break
            value = args[index + 1]
        if "." in value:
            continue
        try:
            path = registry.model_path(value)
        except ValueError:
            continue
        if has_eq:
            args[index] = f"--model={path}"
        else:
            args[index + 1] = path
    return args


class PixelRefineCLI(AnomalibCLI):
    """anomalib's CLI extended with the ``demo`` and ``benchmark`` commands and the ``--post_processor`` alias.

    Args:
        args: Command line arguments (without the program name). Defaults to ``sys.argv[1:]``.
        run: Whether to run the command right away.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        import sys

        from anomalib_pixelrefine.benchmark import pixelrefine_pipelines

        with pixelrefine_pipelines():  # ``benchmark`` = our pipeline; anomalib's registry is restored afterwards
            args = translate_model_args(translate_post_processor_args(sys.argv[1:] if args is None else args))
            super().__init__(args=args, run=run)

    @classmethod
    def parse_only(cls, args: Sequence[str]) -> Any:
        """Parse and validate a command line (aliases and short names included) without building or running anything.

        Used by the documentation test: every documented command must name flags, classes and arguments that exist.

        Raises:
            SystemExit: With jsonargparse's message on stderr, as the command would.
        """
        from anomalib_pixelrefine.benchmark import pixelrefine_pipelines

        cli = cls.__new__(cls)
        with pixelrefine_pipelines():
            args = translate_model_args(translate_post_processor_args(args))
            cli.parser = cli.init_parser()
            cli.subcommand_parsers = {}
            cli.subcommand_method_arguments = {}
            cli.add_subcommands()
            return cli.parser.parse_args(args=args)

    @staticmethod
    def init_parser(**kwargs: Any) -> ArgumentParser:
        """Create a parser whose help lists this package's models and post-processors."""
        kwargs.setdefault("description", _DESCRIPTION)
        kwargs.setdefault("dump_header", [f"anomalib=={_anomalib_version()}"])
        # As AnomalibCLI.init_parser, with a formatter that also lists our models in the sub-commands' help.
        parser = ArgumentParser(formatter_class=PixelRefineHelpFormatter, **kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ActionConfigFile,
            help="Path to a configuration file in json or yaml format.",
        )
        return parser

    @staticmethod
    def anomalib_subcommands() -> dict[str, dict[str, str]]:
        """Anomalib's subcommands plus ``demo`` and ``benchmark``."""
        return {
            **AnomalibCLI.anomalib_subcommands(),
            "demo": {"description": "Build the embedded default data and train/test a model on it (offline)."},
            "weights": {"description": "List or install offline ImageNet weights (EfficientNet-Lite0/1/2)."},
        }

    @staticmethod
    def add_demo_arguments(parser: ArgumentParser) -> None:
        """Add the ``demo`` arguments (those of :func:`anomalib_pixelrefine.demo.run_demo`)."""
        from anomalib_pixelrefine.demo import run_demo

        parser.add_function_arguments(run_demo, as_group=False)

    @staticmethod
    def add_weights_arguments(parser: ArgumentParser) -> None:
        """Add the ``weights`` arguments (those of :func:`anomalib_pixelrefine.weights.run_weights`)."""
        from anomalib_pixelrefine.weights import run_weights

        parser.add_function_arguments(run_weights, as_group=False)

    @staticmethod
    def _add_default_arguments_to_parser(parser: ArgumentParser) -> None:
        """Like anomalib's ``--seed_everything``, with a fixed default (0): ``test`` reproduces ``train``'s split."""
        parser.add_argument(
            "--seed_everything",
            type=bool | int,
            default=0,
            help="Seed of every random number generator (default 0); true picks a random seed.",
        )

    def before_instantiate_classes(self) -> None:
        """Anomalib's config updates, then checkpoint arguments, offline backbones, loader workers, export root."""
        super().before_instantiate_classes()
        subcommand = self.config["subcommand"]
        if subcommand not in _MODEL_COMMANDS:
            return
        config = self.config[subcommand]
        model = config.get("model")
        if model is not None and config.get("ckpt_path"):
            restore_checkpoint_arguments(model, config["ckpt_path"])
        if model is not None:
            resolve_offline_backbone(model)
        seed_data_split(config.get("data"), config.get("seed_everything"))
        link_false_alarm_budget(model, config.get("data"))
        cap_workers(config.get("data"))
        if subcommand == "export" and config.get("export_root") is None:
            config["export_root"] = default_export_root(config.get("ckpt_path"), config.get("default_root_dir"))

    def instantiate_classes(self) -> None:
        """Instantiate classes; ``demo`` and ``weights`` build their own."""
        if self.config["subcommand"] in {"demo", "weights"}:
            return
        super().instantiate_classes()

    def _run_subcommand(self) -> None:
        if self.subcommand == "demo":
            from anomalib_pixelrefine.demo import run_demo

            run_demo(**_plain_kwargs(self.config["demo"]))
            return
        if self.subcommand == "weights":
            from anomalib_pixelrefine.weights import run_weights

            run_weights(**_plain_kwargs(self.config["weights"]))
            return
        from anomalib_pixelrefine.benchmark import pixelrefine_pipelines

        with pixelrefine_pipelines():
            super()._run_subcommand()


def _init_defaults(class_path: str) -> dict[str, Any]:
    """Constructor defaults of an ``AnomalibModule`` (``{}`` when the class cannot be imported)."""
    import inspect

    try:
        cls = registry.import_object(class_path) if "." in class_path else registry.model_class(class_path)
    except (ImportError, ValueError):
        return {}
    return {
        name: param.default
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if param.default is not inspect.Parameter.empty
    }


def _plain(value: Any) -> Any:
    """Namespaces, tuples and paths as plain data, for comparing a configured value with a default."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def restore_checkpoint_arguments(model: Any, ckpt_path: str | Path) -> list[str]:
    """Take the model arguments left at their defaults from the checkpoint's hyper-parameters.

    ``pixelrefine test/predict/export --model Patchcore --ckpt_path model.ckpt`` then rebuilds the model as it was
    trained, refiner included (recorded by the refiner in the hyper-parameters), without restating its arguments;
    arguments given on the command line or in a config win.

    Args:
        model: The ``model`` namespace of the parsed config (``class_path`` + ``init_args``), updated in place.
        ckpt_path: The checkpoint.

    Returns:
        The names of the restored arguments.
    """
    import pickle

    from jsonargparse import Namespace

    from anomalib_pixelrefine.models.components.checkpoint import load_checkpoint

    path = Path(ckpt_path)
    if not path.is_file():
        return []
    try:
        checkpoint = load_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as error:  # Lightning reports it itself
        logger.debug("Checkpoint arguments of %s not read: %s", path, error)
        return []
    hparams = checkpoint.get("hyper_parameters") or {}
    init_args = model.get("init_args")
    if init_args is None:
        return []
    defaults = _init_defaults(str(model.get("class_path", "")))
    restored = []
    for name, value in hparams.items():
        if name.startswith("_") or name not in init_args or name in {"pre_processor", "evaluator", "visualizer"}:
            continue
        current = init_args[name]
        if name == "post_processor":
            if not isinstance(value, dict) or "class_path" not in value or current not in (True, None):
                continue
            value = Namespace(class_path=value["class_path"], init_args=Namespace(**value.get("init_args", {})))
        elif name not in defaults or _plain(current) != _plain(defaults[name]) or _plain(value) == _plain(current):
            continue
        init_args[name] = value
        restored.append(name)
    if restored:
        logger.info("Model arguments taken from the checkpoint %s: %s.", path, ", ".join(restored))
    return restored


def _init_args(spec: Any) -> Any:
    """The ``init_args`` of a parsed ``class_path``/``init_args`` config entry (``None`` for anything else)."""
    return spec.get("init_args") if hasattr(spec, "get") else None


def resolve_offline_backbone(model: Any) -> None:
    """Apply :func:`~anomalib_pixelrefine.offline.resolve_backbone` to a model config's ``backbone``/``layers``."""
    from anomalib_pixelrefine.offline import resolve_backbone

    init_args = model.get("init_args")
    if init_args is None or not isinstance(init_args.get("backbone"), str):
        return
    layers = init_args.get("layers")
    owner = str(model.get("class_path", "model")).rpartition(".")[2]
    backbone, new_layers = resolve_backbone(
        init_args["backbone"], layers, bool(init_args.get("pre_trained", True)), owner
    )
    init_args["backbone"] = backbone
    if layers is not None:
        init_args["layers"] = new_layers


def seed_data_split(data: Any, seed: Any) -> None:
    """Give a datamodule without a ``seed`` the run's seed, so ``test`` and ``predict`` split as ``train`` did.

    anomalib's datamodules split train/val/test with the global random state when their ``seed`` is ``None``; that
    state differs between a ``train`` run (the model's fit consumed random numbers before the split) and a later
    ``test`` of its checkpoint, so the two saw different test images.
    """
    init_args = _init_args(data)
    if init_args is not None and "seed" in init_args and init_args["seed"] is None and type(seed) is int:
        init_args["seed"] = seed


def link_false_alarm_budget(model: Any, data: Any) -> None:
    """Give the datamodule the post-processor's ``max_false_alarm_rate``, so it holds back enough normal images.

    One budget, set once on the post-processor (``--post_processor.max_false_alarm_rate``): a datamodule that takes
    the argument (:class:`~anomalib_pixelrefine.data.SyntheticValFolder`, ``SyntheticValMVTecAD``) gets the same value.
    """
    model_args, data_args = _init_args(model), _init_args(data)
    post_args = _init_args(model_args.get("post_processor") if hasattr(model_args, "get") else None)
    if not hasattr(post_args, "get") or data_args is None or "max_false_alarm_rate" not in data_args:
        return
    rate = post_args.get("max_false_alarm_rate", data_args["max_false_alarm_rate"])
    if rate != data_args["max_false_alarm_rate"]:
        logger.info("data.max_false_alarm_rate set to the post-processor's %s.", rate)
        data_args["max_false_alarm_rate"] = rate


def cap_workers(data: Any) -> None:
    """Cap ``data.num_workers`` at the CPU count (anomalib's datamodules default to 8), saying so once."""
    import os

    init_args = _init_args(data)
    cpus = os.cpu_count() or 1
    if init_args is not None and isinstance(init_args.get("num_workers"), int) and init_args["num_workers"] > cpus:
        logger.info("data.num_workers %d > %d CPUs: using %d.", init_args["num_workers"], cpus, cpus)
        init_args["num_workers"] = cpus


def default_export_root(ckpt_path: str | Path | None, default_root_dir: str | Path | None) -> Path | None:
    """Where ``export`` writes without ``--export_root``: next to the run of the checkpoint.

    A checkpoint at ``<run>/weights/lightning/model.ckpt`` (anomalib's layout) exports to ``<run>/weights/<type>``;
    otherwise ``--default_root_dir`` when it was changed, else the checkpoint's folder.
    """
    if default_root_dir is not None and Path(default_root_dir) != Path("./results"):
        return Path(default_root_dir)
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).resolve()
    if path.parent.name == "lightning" and path.parent.parent.name == "weights":
        return path.parents[2]
    return path.parent


def _anomalib_version() -> str:
    from anomalib import __version__

    return __version__


def _plain_kwargs(config: Any) -> dict[str, Any]:
    kwargs = dict(config.as_dict() if hasattr(config, "as_dict") else config)
    kwargs.pop("config", None)
    kwargs.pop("__path__", None)
    return kwargs


def main() -> None:
    """Run the CLI, printing this package's refusals in one line.

    The console script starts in :mod:`anomalib_pixelrefine.launcher`; the thread policy and output settings are
    applied here again for ``python -m anomalib_pixelrefine.cli`` (the allocator is set when the package is imported).
    """
    from anomalib_pixelrefine.errors import PixelRefineError
    from anomalib_pixelrefine.launcher import configure_output, configure_threads

    configure_threads()
    configure_output()
    try:
        PixelRefineCLI()
    except PixelRefineError as error:
        # A refusal of this package (bad data or arguments, e.g. the --post_processor alias, a folder that is not
        # ours, a bad benchmark configuration, ...; nothing was deleted): one line like argparse's, no traceback.
        raise SystemExit(f"pixelrefine: error: {error}") from None


if __name__ == "__main__":
    main()
