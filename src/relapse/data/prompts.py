"""The KnowMem (MUSE) prompt format: few-shot "Question: …\nAnswer: …" blocks and the strings
that end an answer. Shared by the KnowMem metric (relapse.evaluate.metrics.knowmem) and the
data stage's world-fact probe (relapse.models.world), so that both ask in the same words."""

from __future__ import annotations

STOPS = ("\n\n", "\nQuestion", "Question:")


def few_shot_prompt(examples, question: str) -> str:
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in examples)
    return shots + f"Question: {question}\nAnswer: "
