"""Helpers with no knowledge of models or pruning: atomic file writes (:mod:`~benchsuite.util.atomic`),
names given by users (:mod:`~benchsuite.util.names`) and the progress view (:mod:`~benchsuite.util.progress`).

May import: nothing of benchsuite.
"""
