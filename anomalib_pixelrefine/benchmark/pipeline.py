"""The ``pixelrefine benchmark`` pipeline: anomalib's ``Benchmark`` pipeline with this package's job and outputs.

Reused from anomalib: the ``Pipeline``/``JobGenerator``/``Job`` interfaces, the grid expansion, ``SerialRunner`` and
``ParallelRunner`` (process pool, one worker per device). Added: a fresh process per job (``isolation: process``,
for exact per-job peak memory), our models/post-processors/data sets, and CSV/JSON/Markdown/PNG outputs.

``anomalib benchmark`` keeps its own pipeline: :func:`pixelrefine_pipelines` swaps the registry entry only while the
``pixelrefine`` CLI is parsing and running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import platform
import shlex
import sys
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch
from anomalib.pipelines.benchmark import Benchmark
from anomalib.pipelines.components.base import JobGenerator, Runner
from anomalib.pipelines.components.runners import ParallelRunner, SerialRunner
from anomalib.pipelines.types import GATHERED_RESULTS, PREV_STAGE_RESULT
from jsonargparse import ActionYesNo, ArgumentParser, Namespace

from anomalib_pixelrefine.errors import PixelRefineError

from .config import BenchmarkConfigError, expand_grid, load_config
from .job import DEFAULT_DATA, PixelRefineBenchmarkJob, build_default_data, data_name
from .profiles import PROFILES

logger = logging.getLogger(__name__)

__all__ = [
    "FreshProcessRunner",
    "InProcessRunner",
    "OutputDirError",
    "PixelRefineBenchmark",
    "PixelRefineBenchmarkJobGenerator",
    "check_output_dir",
    "claim_output_dir",
    "failure_summary",
    "pixelrefine_pipelines",
    "report_partial",
    "run_benchmark",
]


def _load_average() -> str:
    """1/5/15-minute load averages (the machine may be shared: compare them with the number of CPUs)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


class PixelRefineBenchmarkJobGenerator(JobGenerator):
    """Expand the grid into :class:`PixelRefineBenchmarkJob` objects (configuration only; built inside the job).

    The embedded default data is built (or found in its cache) here, in the parent process, so parallel jobs never
    write the same folder.

    Args:
        accelerator: ``"cpu"`` or ``"cuda"``.
        settings: The validated top-level configuration (``output_dir``, ``image_size``, ``qualitative_samples``,
            ``n_jobs``, ``plots``).
    """

    def __init__(self, accelerator: str, settings: dict[str, Any]) -> None:
        self.accelerator = accelerator
        self.settings = settings

    @property
    def job_class(self) -> type:
        """Job class whose ``save`` writes the files of this run into ``settings["output_dir"]``."""
        settings = self.settings

        class _BoundJob(PixelRefineBenchmarkJob):
            @staticmethod
            def save(result: Any) -> None:
                if settings.get("print_table", True):
                    PixelRefineBenchmarkJob.save(result)
                from .report import write_results

                metadata = settings.setdefault("metadata", {})
                if "started" in settings:
                    metadata["wall_time_s"] = round(time.perf_counter() - settings["started"], 1)
                    if "cpu_s" in result:
                        metadata["cpu_time_s"] = round(float(result["cpu_s"].fillna(0).sum()), 1)
                    metadata["load_average_end"] = _load_average()
                files = write_results(result, settings["output_dir"], metadata, settings["plots"])
                if settings.get("print_table", True):
                    print(f"Benchmark results written to {Path(settings['output_dir']).resolve()}: {sorted(files)}")

        return _BoundJob

    def generate_jobs(
        self,
        args: dict | None = None,
        previous_stage_result: PREV_STAGE_RESULT = None,
    ) -> Generator[PixelRefineBenchmarkJob, None, None]:
        """Yield one job per grid point of ``args`` (the ``benchmark`` section)."""
        del previous_stage_result
        threads = None
        if self.accelerator == "cpu" and self.settings.get("n_jobs", 1) > 1:
            threads = max(1, (os.cpu_count() or 1) // self.settings["n_jobs"])
        for container in expand_grid(args or {}):
            data = container["data"]
            if isinstance(data, dict) and str(data.get("class_path", "")).lower() in DEFAULT_DATA:
                start = time.perf_counter()
                with contextlib.suppress(Exception):  # a bad/missing category is reported by the job itself
                    build_default_data(data.get("init_args") or {})
                # Build time of each embedded data set (0 when it was cached), kept in the results' metadata.
                built = self.settings.setdefault("metadata", {}).setdefault("data_build_s", {})
                built.setdefault(data_name(data), round(time.perf_counter() - start, 2))
            job = PixelRefineBenchmarkJob(
                accelerator=self.accelerator,
                seed=int(container.get("seed", 0)),
                job_config={key: container.get(key) for key in ("model", "post_processor", "data", "engine")},
                image_size=self.settings.get("image_size"),
                output_dir=self.settings.get("output_dir"),
                qualitative_samples=int(self.settings.get("qualitative_samples", 3)),
                num_threads=threads,
            )
            if self._excluded(job):
                logger.info("Excluded by the configuration: %s", job.job_id)
                continue
            yield job

    def _excluded(self, job: PixelRefineBenchmarkJob) -> bool:
        labels = {key: str(value).lower() for key, value in job.labels.items()}
        return any(
            all(
                labels.get(key) in {str(item).lower() for item in (value if isinstance(value, list) else [value])}
                for key, value in rule.items()
            )
            for rule in self.settings.get("exclude") or []
        )


PARTIAL_ROWS = "rows.partial.jsonl"


def read_partial_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``rows.partial.jsonl`` file; lines that are not a result row (cut, garbage) are skipped with a warning.

    Args:
        path: The file.

    Returns:
        The rows, in file order.
    """
    import json

    rows, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("job_id"), str):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        logger.warning(
            "Skipped %d line(s) of %s that are not result rows (line %s); their jobs run again.",
            len(bad),
            path,
            ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else ""),
        )
    return rows


class PartialRowsMixin:
    """Runner mixin: each finished row is appended to ``<output_dir>/rows.partial.jsonl`` at once.

    A run that is stopped keeps what it measured; with ``resume: true`` the jobs already there (status ``ok``) are not
    run again.
    """

    generator: Any

    def _start_partial(self) -> dict[str, dict[str, Any]]:
        """Set the partial file up; return the rows of an earlier, unfinished run to resume (``{job_id: row}``)."""
        settings = getattr(self.generator, "settings", {})
        self._partial = Path(settings["output_dir"]) / PARTIAL_ROWS if settings.get("output_dir") else None
        if not settings.get("resume") or self._partial is None or not self._partial.is_file():
            return {}
        return {row["job_id"]: row for row in read_partial_rows(self._partial) if row.get("status") == "ok"}

    def _append_rows(self, rows: list[dict[str, Any]]) -> None:
        if self._partial is None or not rows:
            return
        import json

        self._partial.parent.mkdir(parents=True, exist_ok=True)
        with self._partial.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=str) + "\n")


class InProcessRunner(PartialRowsMixin, SerialRunner):
    """anomalib's ``SerialRunner`` (jobs one after another in this process) with partial rows and ``resume``."""

    def run(self, args: dict, prev_stage_results: PREV_STAGE_RESULT = None) -> GATHERED_RESULTS:
        """Run the jobs here, append each row to the partial file, collect and save the results."""
        done = self._start_partial()
        self.failures = False
        results = list(done.values())
        for job in self.generator(args, prev_stage_results):
            if job.job_id in done:
                logger.info("Resumed from %s: %s", self._partial, job.job_id)
                continue
            row = job.run()  # a job catches its own errors: the row carries status and reason
            results.append(row)
            self._append_rows([row])
        gathered = self.generator.job_class.collect(results)
        self.generator.job_class.save(gathered)
        return gathered


class FreshProcessRunner(PartialRowsMixin, ParallelRunner):
    """anomalib's ``ParallelRunner`` with a new (spawned) process for every job, partial rows and ``resume``.

    Each worker exits after one job (``max_tasks_per_child=1``, Python >= 3.11), so the peak memory of the job is
    not mixed with that of the previous ones (``fresh=False``: workers are reused, as anomalib's runner does). With
    ``n_jobs`` workers, jobs run ``n_jobs`` at a time. On Python 3.10 workers are reused (the memory method then
    reads as a high-water mark per worker).

    Args:
        generator: The job generator.
        n_jobs: Worker processes.
        fresh: A new process for every job.
    """

    def __init__(self, generator: JobGenerator, n_jobs: int, fresh: bool = True) -> None:
        super().__init__(generator, n_jobs=n_jobs)
        self.fresh = fresh

    def run(self, args: dict, prev_stage_results: PREV_STAGE_RESULT = None) -> GATHERED_RESULTS:
        """Run the jobs, collect and save their results.

        A worker that dies (killed, out of memory) loses its own job only: the pool is rebuilt for the next ones.
        """
        self.processes = dict.fromkeys(range(self.n_jobs))
        self.results = []
        done = self._start_partial()
        self.results.extend(done.values())
        kwargs: dict[str, Any] = {"max_workers": self.n_jobs, "mp_context": multiprocessing.get_context("spawn")}
        if self.fresh and sys.version_info >= (3, 11):
            kwargs["max_tasks_per_child"] = 1
        executor = ProcessPoolExecutor(**kwargs)
        try:
            for job in self.generator(args, prev_stage_results):
                if job.job_id in done:
                    logger.info("Resumed from %s: %s", self._partial, job.job_id)
                    continue
                while None not in self.processes.values():
                    self._await_cleanup_processes()
                    time.sleep(0.05)
                index = next(i for i, process in self.processes.items() if process is None)
                try:
                    self.processes[index] = executor.submit(job.run, task_id=index)
                except BrokenProcessPool:  # a worker died: the pool cannot be used any more
                    self._await_cleanup_processes(blocking=True)
                    executor.shutdown(wait=False, cancel_futures=True)
                    executor = ProcessPoolExecutor(**kwargs)
                    self.processes[index] = executor.submit(job.run, task_id=index)
            self._await_cleanup_processes(blocking=True)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        if self.failures:  # jobs catch their own errors, so this is a crashed worker (e.g. killed for memory)
            logger.error("At least one benchmark worker process died; its job is missing from the results.")
        gathered = self.generator.job_class.collect(self.results)
        gathered.attrs["worker_died"] = bool(self.failures)
        self.generator.job_class.save(gathered)
        return gathered

    def _await_cleanup_processes(self, blocking: bool = False) -> None:
        """Wait for finished workers (anomalib's), then append their rows to the partial results file."""
        count = len(self.results)
        super()._await_cleanup_processes(blocking=blocking)
        self._append_rows(self.results[count:])


class PixelRefineBenchmark(Benchmark):
    """Benchmark models x post-processors x data sets x seeds; write CSV/JSON/Markdown tables and PNG plots.

    Example:
        >>> from anomalib_pixelrefine.benchmark import PixelRefineBenchmark
        >>> results = PixelRefineBenchmark().run(config="quick")  # doctest: +SKIP
    """

    @staticmethod
    def get_parser(parser: ArgumentParser | None = None) -> ArgumentParser:
        """Parser of ``pixelrefine benchmark``: ``--config FILE|<profile>``, ``--quick``, ``--output_dir``."""
        if parser is None:
            parser = ArgumentParser(description="Benchmark models x post-processors x data sets x seeds.")
        profiles = ", ".join(PROFILES)
        parser.add_argument("--config", type=str | None, default=None, help=f"YAML file, or a profile: {profiles}.")
        parser.add_argument(
            "--quick", action=ActionYesNo, default=False, help="Use the quick profile (about 1.5 min on 2 CPU cores)."
        )
        parser.add_argument("--output_dir", type=str | None, default=None, help="Override the output folder.")
        return parser

    def _get_args(self, args: Namespace | dict | None) -> dict:
        if args is None:
            args = self.get_parser().parse_args()
        values = args if isinstance(args, dict) else dict(args.as_dict() if hasattr(args, "as_dict") else vars(args))
        config = load_config(values.get("config"), quick=bool(values.get("quick")))
        if values.get("output_dir"):
            config["output_dir"] = values["output_dir"]
        return config

    def _setup_runners(self, args: dict) -> list[Runner]:
        accelerators = args["accelerator"] if isinstance(args["accelerator"], list) else [args["accelerator"]]
        runners: list[Runner] = []
        for accelerator in accelerators:
            n_jobs = args["n_jobs"]
            if accelerator == "cuda":
                if not torch.cuda.is_available():
                    msg = "accelerator 'cuda' requested but no CUDA device is available."
                    raise BenchmarkConfigError(msg)
                n_jobs = max(n_jobs, torch.cuda.device_count())
            generator = PixelRefineBenchmarkJobGenerator(accelerator, {**args, "n_jobs": n_jobs})
            if args["isolation"] == "process" or n_jobs > 1:
                runners.append(FreshProcessRunner(generator, n_jobs=n_jobs, fresh=args["isolation"] == "process"))
            else:
                runners.append(InProcessRunner(generator))
        return runners

    def run(self, args: Namespace | dict | None = None, config: str | dict | None = None) -> Any:
        """Run the benchmark and write its outputs.

        Args:
            args: Parsed CLI arguments (``config``, ``quick``, ``output_dir``); parsed from ``sys.argv`` when both
                this and ``config`` are ``None``.
            config: Alternatively a configuration file/profile name/dictionary.

        Returns:
            The results of the last runner (a DataFrame, one row per job).
        """
        try:
            pipeline_args = self._get_args({"config": config} if config is not None else args)
        except BenchmarkConfigError as error:
            if isinstance(args, Namespace):  # command line: a one-line error instead of a traceback
                raise SystemExit(f"pixelrefine benchmark: error: {error}") from None
            raise
        start = time.perf_counter()
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]]
        metadata = {
            "command": " ".join(shlex.quote(arg) for arg in argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads",
            "load_average_start": _load_average(),
            "isolation": pipeline_args["isolation"],
            "config": {key: value for key, value in pipeline_args.items()},
        }
        result, failures = None, []
        try:
            with claim_output_dir(pipeline_args["output_dir"]):
                for runner in self._setup_runners(pipeline_args):
                    runner.generator.settings.update(metadata=metadata, started=start)  # type: ignore[attr-defined]
                    result = runner.run(pipeline_args["benchmark"])
                    failures.append(failure_summary(result))
        except PixelRefineError as error:
            if isinstance(args, Namespace):
                raise SystemExit(f"pixelrefine benchmark: error: {error}") from None
            raise
        summary = "; ".join(failure for failure in failures if failure)
        if isinstance(args, Namespace) and summary:  # command line: any failed job is a failed run
            raise SystemExit(f"pixelrefine benchmark: error: {summary}; results in {pipeline_args['output_dir']}")
        return result


def failure_summary(frame: Any) -> str:
    """One line naming the failed jobs of a results frame and a worker process that died; ``""`` when all ran.

    Skipped jobs (a component that is not installed) do not count as failures.
    """
    if frame is None:
        return ""
    parts = []
    failed = frame[frame["status"] == "failed"] if "status" in frame else frame.iloc[:0]
    if len(failed):
        first = failed.iloc[0]
        parts.append(
            f"{len(failed)} job(s) failed ({first.job_id}: {first.reason}{'; ...' if len(failed) > 1 else ''})"
        )
    if frame.attrs.get("worker_died"):
        parts.append("a worker process died (its job is missing)")
    return ", and ".join(parts)


# Files and folders a run writes into its output folder (overwritten on the next run of the same folder).
OUTPUT_NAMES = ("results.csv", "results.json", "results.md", "per_image.csv", PARTIAL_ROWS, "plots", "qualitative")
OUTPUT_MARKER = ".pixelrefine_output"
OUTPUT_MARKER_TEXT = "anomalib-pixelrefine output folder: its result files are rewritten by the next run.\n"


class OutputDirError(PixelRefineError, FileExistsError):
    """The output folder holds files this package did not write, or another run is writing to it."""


def check_output_dir(output_dir: str | Path) -> Path:
    """Refuse an output folder that holds a file of :data:`OUTPUT_NAMES` without this package's marker.

    Args:
        output_dir: The run's output folder (it need not exist).

    Returns:
        The folder as a ``Path``.

    Raises:
        OutputDirError: Naming the first file a run would overwrite.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        msg = f"Output folder {folder} exists and is not a folder; choose another output folder."
        raise OutputDirError(msg)
    if not (folder / OUTPUT_MARKER).is_file():
        foreign = [folder / name for name in OUTPUT_NAMES if (folder / name).exists()]
        if foreign:
            msg = (
                f"Refusing to write into {folder}: it holds {foreign[0]}, which anomalib-pixelrefine did not write "
                f"(no {OUTPUT_MARKER}); choose another output folder or move the file away."
            )
            raise OutputDirError(msg)
    return folder


@contextlib.contextmanager
def claim_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """Claim ``output_dir`` for one run: refuse a folder that is not ours, and lock it against a concurrent run.

    A folder is ours when it holds the marker ``.pixelrefine_output`` (written the first time a run uses it). A folder
    without the marker that already holds a file of :data:`OUTPUT_NAMES` (e.g. a user's ``results.csv``) is refused
    before any job runs, so nothing of the user's is overwritten. The marker is locked (``flock``) for the whole
    run; a second run into the same folder is refused at once. The lock is released when the process ends.

    Args:
        output_dir: The run's output folder.

    Yields:
        The folder.

    Raises:
        OutputDirError: If the folder is not ours or is locked by another run.
    """
    import fcntl

    folder = check_output_dir(output_dir)
    marker = folder / OUTPUT_MARKER
    folder.mkdir(parents=True, exist_ok=True)
    with marker.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            msg = f"Another pixelrefine run is writing to {folder}; wait for it to finish or choose another folder."
            raise OutputDirError(msg) from None
        handle.seek(0)
        handle.truncate()
        handle.write(OUTPUT_MARKER_TEXT)  # constant: a committed results folder stays unchanged in git
        handle.flush()
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def pixelrefine_pipelines() -> Iterator[None]:
    """Temporarily make ``benchmark`` in anomalib's pipeline registry point to :class:`PixelRefineBenchmark`.

    anomalib's CLI builds the ``benchmark`` sub-command from ``anomalib.cli.pipelines.PIPELINE_REGISTRY`` and runs it
    through the same dictionary, so swapping the entry while the ``pixelrefine`` CLI parses and runs gives it our
    pipeline, and restoring it afterwards leaves ``anomalib benchmark`` (and ``AnomalibCLI`` in the same process)
    unchanged.
    """
    from anomalib.cli import pipelines

    registry = pipelines.PIPELINE_REGISTRY
    if registry is None:
        yield
        return
    previous = registry.get("benchmark")
    registry["benchmark"] = PixelRefineBenchmark
    try:
        yield
    finally:
        if previous is None:
            registry.pop("benchmark", None)
        else:
            registry["benchmark"] = previous


def report_partial(output_dir: str | Path, extra_dirs: list[str | Path] | None = None) -> Any:
    """Write the tables and plots of an interrupted (or split) run from its ``rows.partial.jsonl`` files.

    Args:
        output_dir: The run's output folder (its rows are read, the files written there).
        extra_dirs: Output folders of further runs of the same configuration whose rows are added (e.g. a part of
            the grid run in parallel).

    Returns:
        The results DataFrame.
    """
    from .report import write_results

    rows: dict[str, dict[str, Any]] = {}
    for folder in [output_dir, *(extra_dirs or [])]:
        partial = Path(folder) / PARTIAL_ROWS
        if not partial.is_file():
            msg = f"No partial results in {folder} (expected {partial})."
            raise FileNotFoundError(msg)
        rows.update({row["job_id"]: row for row in read_partial_rows(partial)})
    frame = PixelRefineBenchmarkJob.collect(list(rows.values()))
    metadata = {
        "command": shlex.join(sys.argv),
        "source": ", ".join(str(Path(folder) / "rows.partial.jsonl") for folder in [output_dir, *(extra_dirs or [])]),
        "load_average_end": _load_average(),
    }
    with claim_output_dir(output_dir):
        write_results(frame, output_dir, metadata)
    return frame


def run_benchmark(config: str | Path | dict | None = None, quick: bool = False, output_dir: str | None = None) -> Any:
    """Run the benchmark from Python.

    Args:
        config: YAML file, profile name (a key of :data:`~.profiles.PROFILES`) or dictionary.
        quick: Use the quick profile (``config`` values override it).
        output_dir: Override the output folder.

    Returns:
        The results DataFrame (one row per job).
    """
    return PixelRefineBenchmark().run({"config": config, "quick": quick, "output_dir": output_dir})
