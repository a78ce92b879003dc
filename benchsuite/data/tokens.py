"""Token streams for evaluation (non-overlapping windows) and calibration (random spans).

A corpus is given by name (resolved through the loaded plugins, see :func:`benchsuite.data.corpora.resolve_corpus`)
or as a :class:`~benchsuite.api.corpora.Corpus`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from benchsuite.api.corpora import Corpus
from benchsuite.data.corpora import corpus_split, resolve_corpus

CorpusLike = str | Corpus


def _name(corpus: CorpusLike) -> str:
    return corpus.name if isinstance(corpus, Corpus) else str(corpus)


def eval_windows(tokenizer, corpus: CorpusLike, seq_len: int, max_windows: int | None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` tokens over the corpus' evaluation part (documents
    joined by blank lines, no special tokens), the first ``max_windows`` of them (all if None)."""
    docs = corpus_split(corpus, "evaluation")
    ids: list[int] = []
    need = None if max_windows is None else max_windows * seq_len
    for doc in docs:  # tokenize only as much as needed
        ids.extend(tokenizer(doc + "\n\n", add_special_tokens=False)["input_ids"])
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)


def calibration_samples(tokenizer, corpus: CorpusLike, n_samples: int, length: int, seed: int) -> torch.Tensor:
    """``n_samples`` random spans of ``length`` tokens from distinct calibration documents long
    enough to hold them (LLM-Pruner's and Wanda's sampling), reproducible from ``seed``. Where too few
    documents are that long (e.g. 2,048-token samples from the shipped c4 part), the remaining spans
    are drawn at random offsets of the calibration documents joined by blank lines."""
    docs = corpus_split(corpus, "calibration")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=generator).tolist()
    samples = []
    for i in order:
        ids = tokenizer(docs[i], add_special_tokens=False)["input_ids"]
        if len(ids) <= length:
            continue
        start = int(torch.randint(0, len(ids) - length, (1,), generator=generator))
        samples.append(ids[start:start + length])
        if len(samples) == n_samples:
            break
    if len(samples) < n_samples:
        stream = corpus_tokens(tokenizer, corpus)
        if len(stream) <= length:
            raise ValueError(f"corpus '{_name(corpus)}' has fewer than {length} tokens of calibration text")
        starts = torch.randint(0, len(stream) - length, (n_samples - len(samples),), generator=generator)
        samples.extend(stream[int(s):int(s) + length].tolist() for s in starts)
    return torch.tensor(samples, dtype=torch.long)


def batches(samples: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(samples), batch_size):
        yield samples[start:start + batch_size]


_TOKENS: dict[tuple, torch.Tensor] = {}


def _corpus_list(corpora: CorpusLike | Sequence[Corpus]) -> list[Corpus]:
    """Comma-separated names, one corpus, or a list of them -> the corpora."""
    if isinstance(corpora, str):
        return [resolve_corpus(name.strip()) for name in corpora.split(",")]
    if isinstance(corpora, Corpus):
        return [corpora]
    return [resolve_corpus(c) for c in corpora]


def corpus_tokens(tokenizer, corpora: CorpusLike | Sequence[Corpus]) -> torch.Tensor:
    """Token ids of the calibration parts of ``corpora`` (comma-separated names, a corpus or a list; all of a
    recovery corpus), documents joined by blank lines; tokenized once per tokenizer and corpus names in a process."""
    corpora = _corpus_list(corpora)
    key = (getattr(tokenizer, "name_or_path", None) or id(tokenizer), len(tokenizer),
           ",".join(c.name for c in corpora))
    if key not in _TOKENS:
        ids: list[int] = []
        for corpus in corpora:
            for doc in corpus_split(corpus, "calibration"):
                ids.extend(tokenizer(doc + "\n\n", add_special_tokens=False)["input_ids"])
        _TOKENS[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKENS[key]


def training_windows(tokenizer, corpora: CorpusLike | Sequence[Corpus], length: int) -> torch.Tensor:
    """Non-overlapping ``length``-token windows over the calibration parts of ``corpora``
    (comma-separated names or .txt/.jsonl paths; all of a recovery corpus such as ``instruct``),
    documents joined by blank lines: examples are packed, none is padded."""
    corpora = _corpus_list(corpora)
    ids = corpus_tokens(tokenizer, corpora)
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"corpus '{','.join(c.name for c in corpora)}' has fewer than {length} tokens of "
                         "calibration text")
    return ids[: n * length].reshape(n, length)


def with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    """``windows`` (``[n, length]``) with ``bos`` put before each (``[n, length + 1]``); unchanged when None."""
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], dim=1)
