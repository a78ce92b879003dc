"""Peak memory of one phase, measured honestly (see the reference's note on ru_maxrss).

On CUDA: ``max_memory_allocated`` after a reset, minus what was allocated before the phase.
On CPU: the process's current RSS sampled in a background thread every few milliseconds, peak
minus the level before the phase. Before the phase, freed heap memory is handed back to the system
(``gc.collect`` and glibc's ``malloc_trim``), so that memory freed by an earlier phase and reused by
this one is counted. The record says which was used.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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
        import psutil

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

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.trimmed = release_free_memory()
            self.baseline = self.peak = current_rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, current_rss())

    def result(self) -> dict[str, Any]:
        how = ("cuda max_memory_allocated minus allocated before the phase" if self.device.type == "cuda"
               else f"process RSS sampled every {self.interval_s * 1000:.0f} ms, peak minus the level before"
               + (" (freed heap returned to the OS first: gc + malloc_trim)" if self.trimmed else ""))
        return {"peak_mb": round((self.peak - self.baseline) / 2**20, 1),
                "baseline_mb": round(self.baseline / 2**20, 1), "method": how}


def tensor_bytes(tensors) -> int:
    """Exact bytes held by the given tensors (e.g. gradients, optimizer state)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
