"""Running a request: check it in full (:mod:`~benchsuite.running.plan`), estimate its cost before
spending it (:mod:`~benchsuite.running.estimate`), run each run's stages (:mod:`~benchsuite.running.pipeline`,
LoRA fine-tuning in :mod:`~benchsuite.running.finetune`) over the matrix (:mod:`~benchsuite.running.runner`,
or on Ray: :mod:`~benchsuite.running.cluster`), and keep each result as a record
(:mod:`~benchsuite.running.records`). :mod:`~benchsuite.running.regression` is ``tox -e regression``.

May import: every layer below (evaluation, models, data, host, pruning, api, util).
"""
