"""CoQA as lm-eval's ``coqa`` task defines it (prompt, target, scores), for transformers 5.

lm-eval 0.4's ``coqa`` task scores with ``transformers.data.metrics.squad_metrics``, which transformers 5 removed, so
its task file can't be loaded here. These functions define the same task from the CoQA/SQuAD evaluation's
definitions (the generated task YAML, :mod:`benchsuite.data.tasks`, names them with ``!function``):

- the prompt is the story, then every earlier turn as ``Q: ...`` / ``A: ...``, then the last question and ``A:``;
- the prediction is the first line of the greedy generation;
- an answer is normalised (lower case, punctuation and the articles a/an/the removed, whitespace collapsed); exact
  match compares normalised strings, F1 the overlap of their tokens (1 where both are empty, 0 where one is);
- with several gold answers (CoQA has four annotators), each gold is left out in turn, the prediction takes the best
  score against the others, and the scores are averaged (the official evaluation's rule, so that a human answer and
  a model's are scored alike); with one gold, its score.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def f1(gold: str, prediction: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def scores(golds: list[str], prediction: str) -> dict[str, float]:
    """Exact match and F1 of ``prediction`` against the gold answers (leave-one-out over several)."""
    if len(golds) == 1:
        return {"em": exact(golds[0], prediction), "f1": f1(golds[0], prediction)}
    em_sum = f1_sum = 0.0
    for i in range(len(golds)):
        others = golds[:i] + golds[i + 1:]
        em_sum += max(exact(g, prediction) for g in others)
        f1_sum += max(f1(g, prediction) for g in others)
    return {"em": em_sum / len(golds), "f1": f1_sum / len(golds)}


def doc_to_text(doc: dict[str, Any]) -> str:
    questions, answers = doc["questions"]["input_text"], doc["answers"]["input_text"]
    text = doc["story"] + "\n\n"
    for i, question in enumerate(questions):
        text += f"Q: {question}\n\n" + (f"A: {answers[i]}\n\n" if i < len(questions) - 1 else "A:")
    return text


def doc_to_target(doc: dict[str, Any]) -> list[str]:
    """The last turn's answer, then the other annotators' answers to it that differ (case aside)."""
    turn = len(doc["questions"]["input_text"]) - 1
    golds = [doc["answers"]["input_text"][turn]]
    for other in (doc.get("additional_answers") or {}).values():
        answer = other["input_text"][turn]
        if answer.lower() not in {g.lower() for g in golds}:
            golds.append(answer)
    return golds


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    prediction = results[0].strip().split("\n")[0]
    return scores(doc_to_target(doc), prediction)
