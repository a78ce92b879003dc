"""Pruning machinery the host runs for criteria and granularities: coupled head/channel groups, masks and
physical removal (:mod:`~benchsuite.pruning.structure`), N:M and unstructured masks
(:mod:`~benchsuite.pruning.sparsity`), calibration passes (:mod:`~benchsuite.pruning.calibration`) and
scores checked and kept over training steps (:mod:`~benchsuite.pruning.scoring`).

Plugins may use these (the built-in granularities do). May import: :mod:`benchsuite.api`, :mod:`benchsuite.util`.
"""
