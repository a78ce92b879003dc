"""Measuring a model, dense or pruned: perplexity (:mod:`~benchsuite.evaluation.perplexity`), zero-shot
accuracy through lm-eval (:mod:`~benchsuite.evaluation.zeroshot`), size (:mod:`~benchsuite.evaluation.size`),
latency (:mod:`~benchsuite.evaluation.latency`), peak memory (:mod:`~benchsuite.evaluation.memory`) and
the bootstrap intervals of all of them (:mod:`~benchsuite.evaluation.stats`).

May import: :mod:`benchsuite.data`, :mod:`benchsuite.pruning`, :mod:`benchsuite.host`, :mod:`benchsuite.api`,
:mod:`benchsuite.util`; not :mod:`benchsuite.models` (a sibling).
"""
