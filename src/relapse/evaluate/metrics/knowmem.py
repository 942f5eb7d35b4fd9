"""KnowMem (MUSE): few-shot QA, greedy, ROUGE-L F1 ×100 against the answer (rouge-score
without stemming, MUSE's setting); plus exact match.

Prompt, in the bench's template (relapse.data.prompts; `reference.template`): k examples from the
split's *_icl set (`shots`: a number, or `all`, MUSE's protocol: every example of the set, 10 in
MUSE), then the question. Template `qa` (the default) is MUSE's: "Question: {q}\nAnswer: {a}\n\n"
per example, then "Question: {q}\nAnswer: ", cut at "\n\n", "\nQuestion" or "Question:".
`llama2-chat` writes each example as a finished turn "[INST] {q} [/INST]{a} " (open-unlearning's
form) and cuts at the next "[INST]"; TOFU's own protocol is zero-shot (`shots: 0`, as
config/tofu.yaml sets). `chat` uses the tokenizer's chat template, the examples as earlier turns.
Generation: greedy, `max_new_tokens` (32), and EOS ends it. The holdout split (people never trained on) is a control: its
scores show what guessing from the templates gives. On a pretrained base the split `world`
(real-world facts the base answered at the data stage: relapse.data.world, asked by
relapse.models.world) is reported too: a utility split beside retain, knowledge the unlearning
should not touch. Where the data stage held forget people out of the relearning attack's data
(relapse.data.relearn_split), split `forget_heldout` is the forget split's own per-item scores on
those people's questions: the same generations, so the in-sample and held-out numbers differ only
in which facts they average.
"""

from __future__ import annotations

from relapse.data.prepare import has_split
from relapse.evaluate.registry import MetricResult, register_metric
from relapse.evaluate.rouge import rouge_l
from relapse.models.generation import cut_at_stops, greedy_generate

SPLITS = ("forget", "retain", "holdout")
HELDOUT = "forget_heldout"


def icl_examples(icl, shots, split: str) -> list[tuple[str, str]]:
    """The first `shots` (question, answer) pairs of the split's ICL set, or all with "all"."""
    pairs = list(zip(icl.question, icl.answer))
    if shots == "all":
        return pairs
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise ValueError(f"evaluation.knowmem.shots: {shots!r} is not allowed; allowed: an "
                         "integer >= 0 or 'all'")
    if shots > len(pairs):
        raise ValueError(f"evaluation.knowmem.shots: {shots} but knowmem_{split}_qa_icl has "
                         f"{len(pairs)} examples; allowed: at most {len(pairs)}, or 'all'")
    return pairs[:shots]


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


@register_metric("knowmem")
def knowmem(ctx) -> list[MetricResult]:
    cfg = ctx.cfg["knowmem"]
    results = []
    # `world` (benchmarks on a pretrained base): real facts the base answers, a utility split.
    world = ("world",) if has_split(ctx.data_dir, "knowmem_world_qa") else ()
    # MUSE has no holdout QA (its holdout is raw text): a split the corpus lacks (by the data
    # manifest) is skipped; a listed split whose file is gone stops the evaluation.
    present = tuple(s for s in SPLITS if has_split(ctx.data_dir, f"knowmem_{s}_qa"))
    for split in present + world:
        qa = ctx.split(f"knowmem_{split}_qa", cfg.get("max_items"))
        icl = ctx.split(f"knowmem_{split}_qa_icl")
        examples = icl_examples(icl, cfg.get("shots", 3), split)
        form = ctx.prompts
        prompts = [form.few_shot(examples, q, ctx.tokenizer) for q in qa.question]
        raw = greedy_generate(ctx.model, ctx.tokenizer, prompts, cfg.get("max_new_tokens", 32),
                              ctx.batch_size, stop_strings=form.stops)
        outputs = [cut_at_stops(r, form.stops) for r in raw]
        f1, recall, exact, samples = [], [], [], []
        for row, out in zip(qa.itertuples(), outputs):
            f, r = rouge_l(row.answer, out)
            em = float(normalize(out) == normalize(row.answer))
            f1.append(f); recall.append(r); exact.append(em)
            samples.append({"item": int(row.Index), "pid": int(row.pid), "question": row.question,
                            "answer": row.answer, "output": out, "rougeL_f1": f,
                            "rougeL_recall": r, "exact_match": em})
        results.append(MetricResult("knowmem", split, "rougeL_f1", f1, 100.0, samples))
        results.append(MetricResult("qa_em", split, "exact_match", exact, 1.0))
        if split == "forget":
            results += heldout_results(ctx, f1, exact, samples)
    return results


def heldout_results(ctx, f1: list, exact: list, samples: list[dict]) -> list[MetricResult]:
    """KnowMem and QA-EM on `forget_heldout`: the forget items whose (pid, question) are in
    knowmem_forget_heldout_qa (none when the data has no such split, or max_items cut them)."""
    if not has_split(ctx.data_dir, f"knowmem_{HELDOUT}_qa"):
        return []
    held = ctx.split(f"knowmem_{HELDOUT}_qa")
    wanted = set(zip(held.pid.astype(int), held.question))
    keep = [i for i, s in enumerate(samples) if (s["pid"], s["question"]) in wanted]
    if not keep:
        return []
    return [MetricResult("knowmem", HELDOUT, "rougeL_f1", [f1[i] for i in keep], 100.0,
                         [samples[i] for i in keep]),
            MetricResult("qa_em", HELDOUT, "exact_match", [exact[i] for i in keep], 1.0)]
