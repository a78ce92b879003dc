"""The :class:`Corpus` base class that corpus plugins subclass, and the split of a corpus into
disjoint calibration and evaluation parts.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    pass


Part = Literal["calibration", "evaluation"]


PARTS = ("calibration", "evaluation")


class Corpus:
    """A named source of documents. Perplexity is measured on its evaluation part; calibration samples
    and LoRA recovery text come from its calibration part, so the two never overlap.

    Subclass it, set ``name`` and ``description``, implement :meth:`documents`, and register an instance
    with ``benchsuite_register_corpora``. By default the documents are split by a hash of their text
    (:func:`split_documents`, ``eval_fraction`` of them evaluation); override :meth:`part` for a corpus
    with official splits. ``training_only``: every document is recovery text and there is no evaluation
    part (``instruct``). ``remote``: the text is fetched over the network when used, so it is listed
    apart (it may be unreachable). :meth:`identity` is recorded with every run that uses the corpus.
    """

    name: str = ""
    description: str = ""
    training_only: bool = False
    remote: bool = False
    eval_fraction: float = 0.2

    def documents(self) -> list[str]:
        """Every document of the corpus, in a fixed order (non-empty, stripped strings)."""
        raise NotImplementedError(f"corpus '{self.name}' has no documents()")

    def part(self, part: Part) -> list[str]:
        """The calibration or evaluation documents (disjoint)."""
        _check_part(part)
        if self.training_only:
            if part == "evaluation":
                raise ValueError(f"corpus {self.name!r} is recovery (training) text and has no evaluation part; "
                                 "evaluate on an evaluation corpus (`benchsuite plugins` lists them) or a "
                                 ".txt/.jsonl file")
            return self.documents()
        calibration, evaluation = split_documents(self.documents(), self.eval_fraction)
        return calibration if part == "calibration" else evaluation

    def identity(self) -> dict[str, Any]:
        """What the name stands for, to record with a run: ``name``, and ``source`` and ``sha256`` where known."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be 'calibration' or 'evaluation', got {part!r}")


def split_documents(docs: list[str], eval_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Split documents into (calibration, evaluation), deterministically and disjointly.

    A document goes to evaluation iff the first 8 hex digits of its sha256, modulo 1000, are
    below ``eval_fraction * 1000``. Identical documents land on the same side; order is kept.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be within [0, 1], got {eval_fraction}")
    calibration: list[str] = []
    evaluation: list[str] = []
    for doc in docs:
        bucket = int(hashlib.sha256(doc.encode()).hexdigest()[:8], 16) % 1000
        (evaluation if bucket < eval_fraction * 1000 else calibration).append(doc)
    return calibration, evaluation
