"""Peak memory of one phase, measured honestly (see the reference's note on ru_maxrss).

On CUDA: ``max_memory_allocated`` after a reset, minus what was allocated before the phase, on the
given GPU and on every other GPU that holds tensors of this process when the phase starts (a model
spread over several GPUs with ``--device-map``): the sum of their peaks (an upper bound when the
GPUs peak at different moments), with each GPU's figure kept in the result.
On CPU: the process's current RSS sampled in a background thread every few milliseconds, peak
minus the level before the phase. Before the phase, freed heap memory is handed back to the system
(``gc.collect`` and glibc's ``malloc_trim``), so that memory freed by an earlier phase and reused by
this one is counted. The record says which was used.

The CUDA figure is exact (``exact: true``). The CPU figure is sampled, so it can miss a short peak:
the record keeps the number of samples and the largest gap between two, and flags the figure
(``noisy``, with ``noise_reasons``) when it is coarse (fewer than MIN_SAMPLES samples, or a gap over
MAX_GAP_S, e.g. a thread starved of the CPU) or when other processes pressed on memory during the
phase (the system swapped pages out, or less than MIN_AVAILABLE of the memory was available), which
can push this process's pages out and lower its RSS.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any

import psutil
import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: a sampled peak is flagged as coarse below this many RSS samples ...
MIN_SAMPLES = 5
#: ... or when two samples were further apart than this
MAX_GAP_S = 0.1
#: memory pressure: flagged when the available system memory fell below this fraction of the total
MIN_AVAILABLE = 0.05


def release_free_memory() -> bool:
    """Return freed heap pages to the OS (glibc only); True when that was possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def current_rss() -> int:
    """Resident set size of this process in bytes (current, not lifetime peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return psutil.Process().memory_info().rss


class PeakMemory:
    """Context manager: ``with PeakMemory(device) as pm: ...; pm.result()``."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = 0
        self.peak = 0
        self.trimmed = False
        self.samples = 0
        self.max_gap_s = 0.0
        self._last = 0.0
        self._pressure: dict[str, Any] = {}

    def _read(self) -> None:
        now = time.perf_counter()
        self.peak = max(self.peak, current_rss())
        if self.samples:
            self.max_gap_s = max(self.max_gap_s, now - self._last)
        self.samples += 1
        self._last = now
        if self.samples % 20 == 0:  # every ~0.1 s: /proc/meminfo is slower to read than statm
            self._pressure["min_available"] = min(self._pressure["min_available"],
                                                  psutil.virtual_memory().available)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def _gpus(self) -> list[torch.device]:
        """The measured GPU and every other one on which this process has allocated memory."""
        main = self.device if self.device.index is not None else torch.device("cuda", torch.cuda.current_device())
        others = [torch.device("cuda", i) for i in range(torch.cuda.device_count())
                  if i != main.index and torch.cuda.memory_allocated(i) > 0]
        return [main, *others]

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self._devices = self._gpus()
            self._baselines = {}
            for gpu in self._devices:
                torch.cuda.synchronize(gpu)
                torch.cuda.reset_peak_memory_stats(gpu)
                self._baselines[gpu.index] = torch.cuda.memory_allocated(gpu)
            self.baseline = sum(self._baselines.values())
        else:
            self.trimmed = release_free_memory()
            memory = psutil.virtual_memory()
            self._pressure = {"total": memory.total, "min_available": memory.available,
                              "swapped_out": psutil.swap_memory().sout}
            self._read()
            self.baseline = self.peak
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self._peaks = {}
            for gpu in self._devices:
                torch.cuda.synchronize(gpu)
                self._peaks[gpu.index] = torch.cuda.max_memory_allocated(gpu)
            self.peak = sum(self._peaks.values())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._read()
            self._pressure["min_available"] = min(self._pressure["min_available"], psutil.virtual_memory().available)
            self._pressure["swapped_out"] = psutil.swap_memory().sout - self._pressure["swapped_out"]

    def noise_reasons(self) -> list[str]:
        """Why a sampled peak may be wrong (empty when it can be trusted, and always on CUDA)."""
        if self.device.type == "cuda":
            return []
        out = []
        if self.samples < MIN_SAMPLES:
            out.append(f"coarse: only {self.samples} RSS samples (need {MIN_SAMPLES}); a peak between them is missed")
        if self.max_gap_s > MAX_GAP_S:
            out.append(f"coarse: {self.max_gap_s * 1000:.0f} ms between two RSS samples (sampler starved of the CPU)")
        pressure = self._pressure
        if pressure.get("swapped_out", 0) > 0:
            out.append(f"memory pressure: the system swapped out {pressure['swapped_out'] / 2**20:.0f} MB during the "
                       "phase; this process's RSS may have been lowered")
        if pressure and pressure["min_available"] < MIN_AVAILABLE * pressure["total"]:
            out.append(f"memory pressure: only {pressure['min_available'] / 2**20:.0f} MB of "
                       f"{pressure['total'] / 2**20:.0f} MB available during the phase")
        return out

    def result(self) -> dict[str, Any]:
        """``peak_mb`` above ``baseline_mb``, how it was measured, and whether it can be trusted."""
        exact = self.device.type == "cuda"
        gpus = len(getattr(self, "_devices", [])) if exact else 0
        how = ("cuda max_memory_allocated minus allocated before the phase (exact)"
               + (f", summed over {gpus} GPUs (each GPU's own peak: an upper bound of their joint peak)"
                  if gpus > 1 else "") if exact
               else f"process RSS sampled every {self.interval_s * 1000:.0f} ms, peak minus the level before"
               + (" (freed heap returned to the OS first: gc + malloc_trim)" if self.trimmed else ""))
        reasons = self.noise_reasons()
        return {"peak_mb": round((self.peak - self.baseline) / 2**20, 1),
                "baseline_mb": round(self.baseline / 2**20, 1), "method": how, "exact": exact,
                "samples": None if exact else self.samples, "interval_s": None if exact else self.interval_s,
                "max_gap_ms": None if exact else round(self.max_gap_s * 1000, 1),
                "noisy": bool(reasons), "noise_reasons": reasons} | ({"per_gpu_mb": {
                    f"cuda:{i}": round((self._peaks[i] - self._baselines[i]) / 2**20, 1) for i in self._peaks}}
                    if gpus > 1 else {})


def tensor_bytes(tensors) -> int:
    """Exact bytes held by the given tensors (e.g. gradients, optimizer state)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
