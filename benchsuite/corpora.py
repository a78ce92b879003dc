"""Text corpora for calibration and perplexity, split into disjoint parts.

Bundled corpora (from the ``exllamav3==1.6.5`` wheel, see :mod:`benchsuite.assets`):

- ``wiki``: English Wikipedia articles (``<doc ...>`` tags stripped, title line kept). Of the
  2,349 articles in the file, 1,254 hold only their title and are dropped.
- ``c4``: web documents from C4, one per line.

They are *not* WikiText-2 or PTB: don't compare their perplexities with published numbers.
Each is split deterministically by a hash of the document text (see :func:`split_documents`,
``eval_fraction=0.2``). Measured sizes (documents / characters):

========  ====================  ====================
corpus    calibration           evaluation
========  ====================  ====================
wiki      863 / 1,455,724       232 / 347,783
c4        459 / 1,029,733       125 / 297,798
========  ====================  ====================

Recovery text (LoRA fine-tuning, never evaluated):

- ``instruct``: question -> answer examples in the Alpaca template, built from QA sets of the
  zero-shot task wheel that are not evaluation tasks here, decontaminated against the evaluation
  parts of ``wiki`` and ``c4`` and the seven zero-shot tasks (see :mod:`benchsuite.instruct`). It
  has no evaluation part: all of it is training text.

Other corpus names:

- a path to a local ``.txt`` file (documents separated by blank lines) or ``.jsonl`` file
  (one JSON object per line with a ``text`` field, or an instruction example such as Alpaca's
  ``instruction``/``input``/``output`` or LaMini's ``instruction``/``response``, rendered in the
  Alpaca template), split like the bundled corpora (LoRA recovery trains on the calibration part);
- ``wikitext2`` (alias ``wikitext2-raw``) and ``ptb``: the real datasets through
  ``datasets.load_dataset``, only where the Hugging Face hub is reachable. Their official splits
  are used (train for calibration, test for evaluation), each split joined into one document
  the way the pruning papers do (``"\\n\\n".join`` for WikiText-2, ``" ".join`` for PTB).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

from benchsuite.assets import CORPORA_WHEEL, AssetError, extract_member

Part = Literal["calibration", "evaluation"]

_MEMBER_DIR = "exllamav3/conversion/standard_cal_data"
_BUNDLED = {"wiki": f"{_MEMBER_DIR}/wiki.utf8", "c4": f"{_MEMBER_DIR}/c4.utf8"}
# name -> (dataset path, config, text field, joiner)
_HUB = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text", "\n\n"),
    "wikitext2-raw": ("wikitext", "wikitext-2-raw-v1", "text", "\n\n"),
    "ptb": ("ptb_text_only", "penn_treebank", "sentence", " "),
}
_HUB_SPLITS = {"calibration": "train", "evaluation": "test"}
_WIKI_DOC = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.DOTALL)


#: corpora that are training text only (no evaluation part)
RECOVERY_CORPORA = ("instruct",)


def available_corpora() -> list[str]:
    """Names of the bundled evaluation corpora (local files and hub datasets are accepted too)."""
    return list(_BUNDLED)


def corpus_identity(name: str) -> dict[str, object]:
    """What a corpus name stands for, to record with a run (source and digest)."""
    key = str(name)
    if key == "instruct":
        from .instruct import instruct_manifest

        manifest = instruct_manifest()
        return {"name": key, "source": manifest["wheel"], "sha256": manifest["sha256"],
                "documents": manifest["documents"], "template": "alpaca",
                "sources": {src["name"]: src["documents"] for src in manifest["sources"]},
                "decontamination": {k: manifest["decontamination"][k] for k in ("n", "dropped", "references")}}
    if key in _BUNDLED:
        return {"name": key, "source": f"{CORPORA_WHEEL.requirement}:{_BUNDLED[key]}", "sha256": CORPORA_WHEEL.sha256}
    if key in _HUB:
        return {"name": key, "source": f"datasets: {_HUB[key][0]}/{_HUB[key][1]}"}
    path = Path(key).expanduser()
    if path.is_file():
        return {"name": key, "source": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"name": key}


def load_documents(name: str | os.PathLike[str]) -> list[str]:
    """All documents of a corpus: a bundled name, a local .txt/.jsonl path, or a hub name."""
    key = str(name)
    if key in RECOVERY_CORPORA:
        from .instruct import instruct_documents

        return instruct_documents()
    if key in _BUNDLED:
        text = extract_member(CORPORA_WHEEL, _BUNDLED[key]).read_text(encoding="utf-8")
        if key == "wiki":
            # Each article starts with its title line; more than half are title-only stubs.
            articles = [a.strip() for a in _WIKI_DOC.findall(text)]
            return [a for a in articles if "\n" in a]
        return _clean(text.split("\n"))
    path = Path(key).expanduser()
    if path.suffix in (".txt", ".jsonl"):
        if not path.is_file():
            raise ValueError(f"corpus file {str(path)!r} does not exist")
        return _load_local(path)
    if key in _HUB:
        return _load_hub(key, "calibration") + _load_hub(key, "evaluation")
    raise ValueError(_unknown_message(key))


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


def corpus_split(name: str | os.PathLike[str], part: Part) -> list[str]:
    """The calibration or evaluation documents of a corpus (see the module docstring)."""
    if part not in ("calibration", "evaluation"):
        raise ValueError(f"part must be 'calibration' or 'evaluation', got {part!r}")
    if str(name) in _HUB:
        return _load_hub(str(name), part)
    if str(name) in RECOVERY_CORPORA:
        if part == "evaluation":
            raise ValueError(f"corpus {str(name)!r} is recovery (training) text and has no evaluation part; "
                             f"evaluate on {', '.join(available_corpora())} or a file")
        return load_documents(name)
    calibration, evaluation = split_documents(load_documents(name))
    return calibration if part == "calibration" else evaluation


def _clean(docs: list[str]) -> list[str]:
    return [doc.strip() for doc in docs if doc.strip()]


def _load_local(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"corpus file {str(path)!r} is not UTF-8 text (byte {exc.start}): give a text file") from None
    except OSError as exc:
        raise ValueError(f"corpus file {str(path)!r} can't be read: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise ValueError(f"corpus file {str(path)!r} holds NUL bytes: it looks binary, give a text file")
    if path.suffix == ".txt":
        return _clean(re.split(r"\n[ \t\r\f\v]*\n", text))
    docs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            docs.append(_jsonl_text(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            why = f"no field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(
                f"{path}:{lineno}: {why}; expected a JSON object with a 'text' string, or an instruction example "
                "('instruction' with 'output' or 'response', optional 'input', all strings)"
            ) from None
    return _clean(docs)


def _jsonl_text(obj: dict) -> str:
    """A JSON-lines row's text: its ``text`` field, or an instruction example (Alpaca-cleaned's
    instruction/input/output, LaMini's instruction/response) rendered in the Alpaca template."""
    if not isinstance(obj, dict):
        raise TypeError(f"a {type(obj).__name__}, not an object")
    if "text" in obj:
        return _string(obj, "text")
    from .instruct import render

    response = _string(obj, "output" if "output" in obj else "response")
    return render(_string(obj, "instruction"), response, _string(obj, "input") if obj.get("input") else "")


def _string(obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"field '{key}' is a {type(value).__name__}, not a string")
    return value


def _load_hub(name: str, part: Part) -> list[str]:
    dataset, config, field, joiner = _HUB[name]
    try:
        from datasets import load_dataset

        rows = load_dataset(dataset, config, split=_HUB_SPLITS[part])[field]
    except Exception as exc:
        raise AssetError(
            f"Could not load the corpus {name!r} ({dataset}/{config}, split "
            f"{_HUB_SPLITS[part]}) with datasets.load_dataset: {type(exc).__name__}: {exc}. "
            "The Hugging Face hub is probably unreachable from this machine (or the datasets "
            "package is missing); if the dataset is in your local Hugging Face cache, set "
            "HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1. Otherwise use a bundled corpus "
            f"({', '.join(available_corpora())}), or give the path of a local .txt file "
            "(documents separated by blank lines) or .jsonl file (field 'text') holding "
            "that text."
        ) from exc
    return [joiner.join(rows)]


def _unknown_message(name: str) -> str:
    known = available_corpora() + list(RECOVERY_CORPORA) + list(_HUB)
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"Unknown corpus {name!r}.{hint} Available corpora: {', '.join(available_corpora())} "
        f"(and {', '.join(RECOVERY_CORPORA)} for LoRA recovery); "
        "also accepted: a path to an existing .txt or .jsonl file, and "
        f"{', '.join(_HUB)} (only where the Hugging Face hub is reachable)."
    )
