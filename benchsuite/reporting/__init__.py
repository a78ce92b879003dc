"""Reading records back: comparison tables (:mod:`~benchsuite.reporting.tables`), paired differences with
intervals (:mod:`~benchsuite.reporting.compare`), figures (:mod:`~benchsuite.reporting.figures`) and the
self-contained HTML report (:mod:`~benchsuite.reporting.html`).

May import: :mod:`benchsuite.running` (its records), and every layer below it.
"""
