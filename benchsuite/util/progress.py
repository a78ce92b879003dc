"""One progress view for a whole ``benchsuite run``, and the quieting of other libraries' output.

The runner tells the current :class:`Progress` which run of the matrix starts and ends, and the stages
(``prune``, ``fine-tune``, ``evaluate``); inner loops (calibration passes, LoRA steps, perplexity batches)
report through :func:`track` instead of drawing their own bars. Without an active view (library use, tests)
these calls do nothing: :func:`current` is then a silent :class:`Progress`.

The view writes to stderr, never stdout (stdout carries only the results table):

- on a terminal (stdout and stderr both TTYs): one status line, redrawn in place, e.g.
  ``[2/5] magnitude-l2 ratio=0.5 seed=0 · fine-tune 12/40 · ETA 3m20s``; log lines print above it;
- otherwise: plain lines, one when a run or a stage starts, never a carriage return.

The ETA learns from what finished: a pending run is expected to take the mean time of the finished runs of
its kind (its method variant, or ``dense``), else the sum of the mean times of the stages such runs went
through, else the mean time of any finished pruned run; the current run's remaining stages likewise.

The same clock keeps the matrix's timeline (:meth:`Progress.summary`): each setup step (:meth:`Progress.setup`)
and each stage of each run that ran, in order, with its seconds; ``benchsuite run`` prints where the time went
and ``--timings`` writes it as JSON.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: loggers of libraries we call whose INFO/WARNING chatter is hidden unless ``-v``
THIRD_PARTY_LOGGERS = ("lm-eval", "lm_eval", "transformers", "datasets", "huggingface_hub", "peft", "accelerate",
                       "urllib3", "filelock", "fsspec", "evaluate", "sqlitedict",
                       # torch's CUDA wheels on a machine without CUDA: "No CUDA runtime is found" when imported
                       "torch.utils.cpp_extension")

def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _short(seconds: float) -> str:
    """A duration as :func:`format_duration`, with tenths under 10 s."""
    return f"{seconds:.1f}s" if seconds < 9.95 else format_duration(seconds)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class Progress:
    """The matrix's progress: runs total and done, the current run and stage, a stage-level count, an ETA.

    ``stream`` is where the view and log lines go (stderr); ``live`` redraws one status line (a terminal),
    else plain lines are printed; ``quiet`` prints only errors; ``enabled=False`` prints nothing at all (the
    silent default); ``verbose`` lets other libraries' logs and bars through (see :func:`quiet_libraries`).
    ``clock`` is ``time.monotonic`` (tests pass a fake one).
    """

    def __init__(self, stream: IO[str] | None = None, *, live: bool = False, quiet: bool = False,
                 verbose: bool = False, enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 min_interval: float = 0.2) -> None:
        self.stream = stream
        self.live = live
        self.quiet = quiet
        self.verbose = verbose
        self.enabled = enabled and stream is not None
        self.clock = clock
        self.min_interval = min_interval
        self.kinds: list[str] = []  # kind of every run of the matrix, in order
        self.done = 0
        self.run_label: str | None = None
        self.run_kind: str | None = None
        self.run_started = 0.0
        self.run_stages: list[str] = []  # stages the current run has entered
        self.stage: str | None = None
        self.stage_started = 0.0
        self.sub: tuple[str, int | None, int] | None = None  # the inner loop: name, total, count
        self.run_times: dict[str, list[float]] = defaultdict(list)
        self.stage_times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.kind_stages: dict[str, list[str]] = {}
        #: what took the time, in order: {"run": label or "setup", "kind", "stage", "seconds"}
        self.timeline: list[dict[str, Any]] = []
        self.began: float | None = None  # the clock when the first setup step or run started
        self._drawn = 0.0
        self._line = ""  # the status line now on screen (live mode)

    # -- the matrix --------------------------------------------------------------------------------------
    def start_matrix(self, kinds: list[str]) -> None:
        if not self.enabled:
            return
        self.kinds = list(kinds)
        self.done = 0

    def start_run(self, label: str, kind: str) -> None:
        if not self.enabled:
            return
        self._end_stage()
        self.run_label, self.run_kind = label, kind
        self.run_started = self.clock()
        if self.began is None:
            self.began = self.run_started
        self.run_stages = []
        self.stage, self.sub = None, None
        self._draw(force=True)

    def finish_run(self, measured: bool = True) -> None:
        """The current run ended; ``measured``: it ran (a kept record's time says nothing about the next)."""
        if not self.enabled or self.run_label is None:
            return
        self._end_stage(record=measured)
        if measured and self.run_kind is not None:
            self.run_times[self.run_kind].append(self.clock() - self.run_started)
            self.kind_stages[self.run_kind] = list(self.run_stages)
        self.done += 1
        self.run_label, self.run_kind, self.stage, self.sub = None, None, None, None
        self._draw(force=True)

    def set_stage(self, name: str) -> None:
        """The current run enters stage ``name`` (prune, fine-tune, evaluate)."""
        if not self.enabled:
            return
        self._end_stage()
        self.stage, self.sub = name, None
        self.stage_started = self.clock()
        self.run_stages.append(name)
        if self.run_label is not None and len(self.run_stages) > 1:  # the runner's line announced the first
            self._print_plain(f"[{self.done + 1}/{self.total}] {self.run_label}: {name}" + self.eta_text(" · "))
        self._draw(force=True)

    def _end_stage(self, record: bool = True) -> None:
        if self.stage is not None and self.run_kind is not None and record:
            seconds = self.clock() - self.stage_started
            self.stage_times[(self.run_kind, self.stage)].append(seconds)
            self.timeline.append({"run": self.run_label, "kind": self.run_kind, "stage": self.stage,
                                  "seconds": seconds})
        self.stage = None

    @contextlib.contextmanager
    def setup(self, name: str) -> Iterator[None]:
        """Time a step before the runs (fetching the model, preparing data) as stage ``name`` of ``setup``."""
        if not self.enabled:
            yield
            return
        start = self.clock()
        if self.began is None:
            self.began = start
        try:
            yield
        finally:
            self.timeline.append({"run": "setup", "kind": "setup", "stage": name, "seconds": self.clock() - start})

    def summary(self) -> dict[str, Any]:
        """Where the time went: ``total_s`` (from the first setup step or run until now), ``by_stage`` (seconds per
        stage name over all runs, setup steps under ``setup``), ``runs`` (per run: its stages' seconds) and the
        ``timeline`` itself. Runs kept from earlier records took no time and are not in it."""
        total = 0.0 if self.began is None else self.clock() - self.began
        by_stage: dict[str, float] = {}
        runs: dict[str, dict[str, float]] = {}
        for entry in self.timeline:
            stage = "setup" if entry["run"] == "setup" else entry["stage"]
            by_stage[stage] = by_stage.get(stage, 0.0) + entry["seconds"]
            run = runs.setdefault(entry["run"], {})
            run[entry["stage"]] = run.get(entry["stage"], 0.0) + entry["seconds"]
        by_stage["other"] = max(0.0, total - sum(by_stage.values()))
        return {"total_s": total, "by_stage": by_stage, "runs": runs, "timeline": list(self.timeline)}

    def time_report(self) -> str:
        """One line: the total and each stage's share of it (empty when nothing ran)."""
        summary = self.summary()
        if not self.timeline:
            return ""
        total = summary["total_s"]
        parts = [f"{stage} {_short(seconds)} ({100 * seconds / total:.0f}%)"
                 for stage, seconds in summary["by_stage"].items() if total and seconds >= 0.05]
        return " · ".join([f"time: {_short(total)} in all", *parts])

    # -- inner loops ---------------------------------------------------------------------------------------
    def track(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """Iterate ``iterable`` as the stage's inner loop ``desc`` (counted, shown in the view)."""
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        outer = self.sub
        self.sub = (desc, total, 0)
        self._draw()
        try:
            for count, item in enumerate(iterable, 1):
                yield item
                self.sub = (desc, total, count)
                self._draw()
        finally:
            self.sub = outer
            self._draw()  # rate-limited: a loop run many times (a criterion's per-layer pass) must not flood

    # -- lines -----------------------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        """A line of ours (run started, kept, results): not in ``quiet`` mode."""
        if not self.quiet:
            self._write_line(line)

    def error(self, line: str) -> None:
        """An error or warning of ours: always printed."""
        self._write_line(line, always=True)

    def _write_line(self, line: str, always: bool = False) -> None:
        if self.stream is None or not (self.enabled or always):
            return
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()
        self._draw(force=True)

    def _print_plain(self, line: str) -> None:
        if not self.live:
            self.log(line)

    def close(self) -> None:
        self._clear()

    # -- ETA ----------------------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.kinds)

    def _run_estimate(self, kind: str) -> float | None:
        """A whole run of ``kind``: the mean of the finished ones, else (a pruned run) of any finished pruned run."""
        if self.run_times.get(kind):
            return _mean(self.run_times[kind])
        pruned = [t for k, times in self.run_times.items() if k != "dense" for t in times]
        return _mean(pruned) if pruned and kind != "dense" else None

    def _current_left(self) -> float | None:
        """What the current run still needs: by the stages runs of its kind went through (the current one's
        mean minus its elapsed time, then the later ones), else the whole-run estimate minus the elapsed time."""
        kind, now = self.run_kind, self.clock()
        assert kind is not None
        stages = self.kind_stages.get(kind)
        if stages:
            left = 0.0
            for name in stages:
                if name in self.run_stages and name != self.stage:
                    continue  # finished
                times = self.stage_times.get((kind, name))
                if not times:
                    return None
                elapsed = now - self.stage_started if name == self.stage else 0.0
                left += max(0.0, _mean(times) - elapsed)
            return left
        whole = self._run_estimate(kind)
        return None if whole is None else max(0.0, whole - (now - self.run_started))

    def eta(self) -> float | None:
        """Seconds left for the matrix, from the finished runs and stages; None while nothing is known."""
        left = 0.0
        current = self.run_label is not None
        for kind in self.kinds[self.done + current:]:
            estimate = self._run_estimate(kind)
            if estimate is None:
                return None
            left += estimate
        if current:
            rest = self._current_left()
            if rest is None:
                return None
            left += rest
        return left

    def eta_text(self, prefix: str = "") -> str:
        eta = self.eta() if self.enabled and self.kinds else None
        return f"{prefix}ETA {format_duration(eta)}" if eta is not None else ""

    # -- the status line (live mode) ------------------------------------------------------------------------
    def status(self) -> str:
        parts = [f"[{self.done}/{self.total} runs done]"] if self.total else []
        if self.run_label is not None:
            parts.append(self.run_label)
        if self.stage is not None:
            parts.append(self.stage)
        if self.sub is not None:
            desc, total, count = self.sub
            parts.append(f"{desc} {count}/{total}" if total else f"{desc} {count}" if count else desc)
        eta = self.eta_text()
        if eta:
            parts.append(eta)
        return " · ".join(parts)

    def _draw(self, force: bool = False) -> None:
        if not (self.enabled and self.live and not self.quiet):
            return
        now = self.clock()
        if not force and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        width = _terminal_width()
        line = self.status()[: width - 1]
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._line = line

    def _clear(self) -> None:
        if self._line and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._line = ""


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.__stderr__.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return 100


_SILENT = Progress(enabled=False)
_current: Progress = _SILENT


def current() -> Progress:
    """The active view (a silent one when none is active)."""
    return _current


@contextlib.contextmanager
def active(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the view that :func:`track` and :func:`stage` report to, for the block."""
    global _current
    before = _current
    _current = progress
    try:
        yield progress
    finally:
        progress.close()
        _current = before


def track(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``iterable``, counted in the active view (or as it is when there is none)."""
    view = _current
    if not view.enabled:
        return iter(iterable)
    return view.track(iterable, desc, total)


class _ViewBar:
    """What :func:`bar` yields inside an active view: tqdm's ``update`` and ``set_postfix_str``."""

    def __init__(self, view: Progress, desc: str, total: int | None, scale: float, unit: str) -> None:
        self.view, self.desc, self.total, self.scale, self.unit = view, desc, total, scale, unit
        self.n = 0
        self.postfix = ""

    def _show(self, force: bool = False) -> None:
        label = f"{self.desc} {self.postfix}".strip()
        done, total = round(self.n / self.scale), self.total and round(self.total / self.scale)
        self.view.sub = (f"{label} ({self.unit})" if self.unit else label, total, done)
        self.view._draw(force)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._show()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self._show()


@contextlib.contextmanager
def bar(total: int | None, desc: str, *, unit: str = "it", unit_scale: bool = False, disable: bool = False):
    """One progress bar for a download, an extraction or a conversion: a tqdm bar without an active view,
    else a line (plain mode) and the view's inner count."""
    view = _current
    if not view.enabled or view.verbose:
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=disable) as tq:
            yield tq
        return
    if disable:
        yield _ViewBar(Progress(enabled=False), desc, total, 1, "")
        return
    scale = 1e6 if unit == "B" else 1.0
    shown = _ViewBar(view, desc, total, scale, "MB" if unit == "B" else "")
    outer = view.sub
    size = f" ({total / 1e6:.0f} MB)" if unit == "B" and total else ""
    view._print_plain(f"{desc}{size} ...")
    shown._show(force=True)
    try:
        yield shown
    finally:
        view.sub = outer
        view._draw(force=True)


def stage(name: str) -> None:
    _current.set_stage(name)


def setup(name: str) -> contextlib.AbstractContextManager[None]:
    """Time the block as setup step ``name`` in the active view (see :meth:`Progress.setup`)."""
    return _current.setup(name)


def for_terminal(*, quiet: bool = False, verbose: bool = False) -> Progress:
    """The view of a command line run: on stderr; redrawn in place only when stdout and stderr are terminals."""
    stream = sys.stderr
    live = _isatty(sys.stdout) and _isatty(stream)
    return Progress(stream, live=live, quiet=quiet, verbose=verbose)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# -- other libraries ------------------------------------------------------------------------------------------
_LIBRARIES = r"(transformers|peft|lm_eval|datasets|huggingface_hub|accelerate|evaluate|torch)(\.|$)"
_WARNING_FILTER: list[Any] = [None]


def quiet_libraries(verbose: bool = False) -> None:
    """Hide (``verbose=False``) or show other libraries' log lines and progress bars: transformers, datasets,
    huggingface_hub, lm-eval. Errors are still shown. Our own loggers show INFO with ``verbose``."""
    level = logging.INFO if verbose else logging.ERROR
    warnings.filters[:] = [f for f in warnings.filters if f is not _WARNING_FILTER[0]]
    if not verbose:  # their DeprecationWarnings and FutureWarnings, not ours
        warnings.filterwarnings("ignore", module=_LIBRARIES)
        _WARNING_FILTER[0] = warnings.filters[0]
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if verbose:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        os.environ.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("benchsuite").setLevel(logging.INFO)
    else:
        logging.getLogger("benchsuite").setLevel(logging.NOTSET)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when they are imported
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as tf_logging

        if verbose:
            tf_logging.set_verbosity_warning()
            tf_logging.enable_progress_bar()
        else:
            tf_logging.set_verbosity_error()
            tf_logging.disable_progress_bar()
    if "datasets" in sys.modules:  # importing it only for this would cost a second
        from datasets.utils import logging as ds_logging

        if verbose:
            import datasets.config

            datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS = None  # set from our variable when imported
            ds_logging.set_verbosity_warning()
            ds_logging.enable_progress_bar()
        else:
            ds_logging.set_verbosity_error()
            ds_logging.disable_progress_bar()


@contextlib.contextmanager
def captured_stderr(what: str) -> Iterator[None]:
    """Hold what other libraries write to stderr during the block (lm-eval's bars and warnings) unless the
    active view is verbose; if the block raises, print the last lines held, so no error is hidden."""
    view = _current
    if not view.enabled or view.verbose:
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        tail = [line for line in buffer.getvalue().replace("\r", "\n").splitlines() if line.strip()][-20:]
        if tail:
            view.error(f"  {what} wrote before failing:\n    " + "\n    ".join(tail))
        raise
