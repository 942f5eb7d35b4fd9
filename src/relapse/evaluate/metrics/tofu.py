"""TOFU's own metrics (Maini et al. 2024, locuslab/tofu), on the splits the tofu corpus writes
(tofu_{forget,retain,real_authors,world_facts}_perturbed; relapse.data.corpora.tofu).

Per item, with the bench's prompt (relapse.data.prompts, `reference.template`: "[INST] {q}
[/INST]" for the llama2 TOFU models, TOFU's own tags; "Question: {q}\nAnswer: " with `qa`) and L(a)
the mean per-token NLL of answer a followed by EOS (TOFU's labels: the answer tokens and EOS):
  probability   forget, retain: exp(-L(answer)); real_authors, world_facts: exp(-L(answer))
                normalized over the answer and its perturbed options
  ROUGE-L       recall of the greedy answer against the answer (TOFU reports recall), with
                stemming (rouge-score use_stemmer=True, as TOFU and open-unlearning; MUSE's
                metrics do not stem)
  truth ratio   R = exp(mean_j L(perturbed_j) - L(base)), base = paraphrased answer (forget,
                retain) or the answer (real_authors, world_facts), as TOFU's code computes it
                (P(base) over the geometric mean of P(perturbed), per-token). Reported as
                mean(min(R, 1/R)) on forget and mean(max(0, 1 - 1/R)) elsewhere, as TOFU does.
  forget quality  the p-value of the two-sample KS test between this model's R on forget and
                the retain model's (the full-precision retrain, or the matched one): 1 when the
                two distributions cannot be told apart
  model utility the harmonic mean of the nine numbers {probability, ROUGE-L, truth ratio} x
                {retain, real_authors, world_facts}
Every quant cell gets them; the retrain cell's own forget R are its reference's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relapse.evaluate.registry import MetricResult, register_metric

SPLITS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")


def prompt(question: str, template: str | None = None, tokenizer=None) -> str:
    """The question as the models were fine-tuned to see it (template: default qa)."""
    from relapse.data.prompts import get_template

    return get_template(template).prompt(question, tokenizer)


# --- formulas (pure numpy / scipy) ---------------------------------------------------------

def truth_ratio_stat(base_loss, perturbed_loss) -> np.ndarray:
    """R per item: base_loss [n] and perturbed_loss [n, k] are mean per-token NLLs."""
    base = np.asarray(base_loss, dtype=float)
    pert = np.asarray(perturbed_loss, dtype=float).reshape(len(base), -1)
    return np.exp(pert.mean(axis=1) - base)


def truth_ratio_scores(ratios, split: str) -> np.ndarray:
    """TOFU's per-item truth ratio score: forget rewards R near 1 (no preference left),
    the others reward preferring the true answer."""
    r = np.asarray(ratios, dtype=float)
    return np.minimum(r, 1 / r) if split == "forget" else np.maximum(0.0, 1 - 1 / r)


def probability_scores(answer_loss, perturbed_loss, split: str) -> np.ndarray:
    p_true = np.exp(-np.asarray(answer_loss, dtype=float))
    if split in ("forget", "retain"):
        return p_true
    p_false = np.exp(-np.asarray(perturbed_loss, dtype=float)).reshape(len(p_true), -1)
    return p_true / (p_true + p_false.sum(axis=1))


def forget_quality(ratios, reference_ratios) -> tuple[float, float]:
    """(p-value, KS statistic) of the two-sample KS test between two sets of truth ratios."""
    from scipy.stats import ks_2samp

    test = ks_2samp(np.asarray(ratios, dtype=float), np.asarray(reference_ratios, dtype=float))
    return float(test.pvalue), float(test.statistic)


def model_utility(values) -> float:
    """Harmonic mean; 0 when any value is 0 (one broken ability breaks utility)."""
    v = np.asarray(list(values), dtype=float)
    if (v <= 0).any():
        return 0.0
    return float(len(v) / (1 / v).sum())


# --- model side -------------------------------------------------------------------------------

def answer_losses(model, tokenizer, prompts, answers, batch_size: int = 16) -> np.ndarray:
    """Mean per-token NLL of each answer and EOS after its prompt (the prompt's tokens are
    context): TOFU's labels, the answer tokens with EOS appended."""
    import torch

    from relapse.models.batching import encode

    out = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        p, a = list(prompts[start:start + batch_size]), list(answers[start:start + batch_size])
        batch = encode(tokenizer, [pi + ai for pi, ai in zip(p, a)], eos=True, prompts=p)
        labels = batch["labels"]
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:].to(device)
        keep = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll = -(picked * keep).sum(1) / keep.sum(1).clamp(min=1)
        out += nll.cpu().tolist()
    return np.array(out, dtype=float)


def _reference_ratios(ctx) -> tuple[np.ndarray | None, str | None]:
    """The retain model's forget R: this cell's own when it is that model (FQ = 1 by
    construction), else from the reference cell's samples.parquet (full first, then matched)."""
    import pandas as pd

    for name in ("full", "matched"):
        if name in ctx.self_references:
            return None, name
        frame = ctx.references.get(name)
        if frame is not None and frame.attrs.get("path"):
            samples = pd.read_parquet(Path(frame.attrs["path"]).with_name("samples.parquet"))
            rows = samples[(samples.metric == "tofu_truth_ratio") & (samples.split == "forget")]
            if rows.empty:
                raise ValueError(f"{frame.attrs['path']}: the retain model's samples hold no "
                                 "tofu truth ratios on forget; evaluate it with metric tofu")
            return rows.sort_values("item").ratio.to_numpy(dtype=float), name
    return np.array([]), None


@register_metric("tofu")
def tofu(ctx) -> list[MetricResult]:
    from relapse.evaluate.rouge import rouge_l_stemmed
    from relapse.models.generation import cut_at_stops, greedy_generate

    cfg = ctx.cfg.get("tofu", {})
    bs = ctx.cfg.get("scoring", {}).get("batch_size", 16)
    results, utility, own_forget = [], [], None
    for split in SPLITS:
        data = ctx.split(f"tofu_{split}_perturbed", cfg.get("max_items"))
        form = ctx.prompts
        prompts = [form.prompt(q, ctx.tokenizer) for q in data.question]
        perturbed = [list(p) for p in data.perturbed]
        k = min(len(p) for p in perturbed)
        ans = answer_losses(ctx.model, ctx.tokenizer, prompts, list(data.answer), bs)
        base = answer_losses(ctx.model, ctx.tokenizer, prompts, list(data.base_answer), bs)
        flat = answer_losses(ctx.model, ctx.tokenizer, [p for p in prompts for _ in range(k)],
                             [x for ps in perturbed for x in ps[:k]], bs).reshape(len(prompts), k)
        ratios = truth_ratio_stat(base, flat)
        tr = truth_ratio_scores(ratios, split)
        prob = probability_scores(ans, flat, split)
        raw = greedy_generate(ctx.model, ctx.tokenizer, prompts, cfg.get("max_new_tokens", 64),
                              ctx.batch_size, stop_strings=form.stops)
        outputs = [cut_at_stops(r, form.stops).strip() for r in raw]
        recall = [rouge_l_stemmed(a, o)[1] for a, o in zip(data.answer, outputs)]
        samples = [{"item": int(i), "pid": int(pid), "question": q, "answer": a, "output": o,
                    "answer_loss": float(la), "base_loss": float(lb),
                    "perturbed_loss": float(lp.mean()), "ratio": float(r), "truth_ratio": float(t),
                    "probability": float(p), "rougeL_recall": float(rc)}
                   for i, pid, q, a, o, la, lb, lp, r, t, p, rc in zip(
                       data.index, data.pid, data.question, data.answer, outputs, ans, base,
                       flat, ratios, tr, prob, recall)]
        results += [MetricResult("tofu_prob", split, "probability", prob.tolist()),
                    MetricResult("tofu_rouge", split, "rougeL_recall", recall),
                    MetricResult("tofu_truth_ratio", split, "truth_ratio", tr.tolist(),
                                 samples=samples)]
        if split in UTILITY_SPLITS:
            utility += [float(prob.mean()), float(np.mean(recall)), float(tr.mean())]
        if split == "forget":
            own_forget = ratios
    results.append(MetricResult("tofu_model_utility", "utility", "hmean", [model_utility(utility)]))
    reference, name = _reference_ratios(ctx)
    if name is not None:
        reference = own_forget if reference is None else reference
        pvalue, stat = forget_quality(own_forget, reference)
        results.append(MetricResult("tofu_forget_quality", "forget", "ks_pvalue", [pvalue],
                                    columns={"fq_reference": name, "ks_statistic": stat}))
    else:
        print("[tofu] no retain-model reference for this cell: forget quality skipped "
              "(keep privleak in evaluation.metrics, whose reference it shares)", flush=True)
    return results
