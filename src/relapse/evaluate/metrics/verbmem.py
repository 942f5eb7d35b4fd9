"""VerbMem (MUSE): greedy continuation of a forget-text prefix, ROUGE-L F1 ×100 against the
ground-truth continuation cut to `max_new_tokens` (128) tokens counted as MUSE's code counts them,
with the tokenizer's special tokens: with a BOS, the ground truth keeps 127 content tokens
(muse_bench metrics/verbmem.py tokenizes it with add_special_tokens=True, then slices). Also
`facts recalled`: the share of the person's attributes in the ground truth that appear in the
continuation (DESIGN §5: ROUGE-L is about 0.5 even for never-seen people, because names and
templates are predictable; facts are not)."""

from __future__ import annotations

from relapse.evaluate.registry import MetricResult, register_metric
from relapse.evaluate.rouge import rouge_l
from relapse.models.generation import greedy_generate


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """The first `max_tokens` tokens of `text`, special tokens (BOS) included in the count and
    dropped from the decoded text."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


@register_metric("verbmem")
def verbmem(ctx) -> list[MetricResult]:
    cfg = ctx.cfg["verbmem"]
    max_new = cfg.get("max_new_tokens", 128)
    data = ctx.split("verbmem_forget", cfg.get("max_items"))
    outputs = greedy_generate(ctx.model, ctx.tokenizer, list(data.prompt), max_new, ctx.batch_size)
    has_facts = "facts" in data.columns
    f1, facts, samples = [], [], []
    for row, out in zip(data.itertuples(), outputs):
        gt = truncate_tokens(ctx.tokenizer, row.gt, max_new)
        f, r = rouge_l(gt, out)
        # Only the synthetic corpus knows each text's facts; MUSE and TOFU have none.
        wanted = list(row.facts) if has_facts else []
        recalled = sum(1 for fact in wanted if fact in out) / len(wanted) if wanted else 0.0
        f1.append(f); facts.append(recalled)
        samples.append({"item": int(row.Index), "pid": int(row.pid), "prompt": row.prompt,
                        "gt": gt, "output": out, "rougeL_f1": f, "rougeL_recall": r,
                        "facts_recalled": recalled})
    results = [MetricResult("verbmem", "forget", "rougeL_f1", f1, 100.0, samples)]
    if has_facts:
        results.append(MetricResult("verbmem_facts", "forget", "facts_recalled", facts, 1.0))
    return results
