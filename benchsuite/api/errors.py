"""The errors benchsuite reports to users as one clear message (no traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem (unknown name, bad parameter, unsupported model)."""


class AssetError(RuntimeError):
    """A model or data asset could not be fetched, verified or converted."""


class StorageError(RuntimeError):
    """The results folder can't take what a run writes (no space left, write access lost): said in one line with
    the folder and what was kept; finished records stay intact and nothing partial is left."""
