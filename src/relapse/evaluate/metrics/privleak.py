"""PrivLeak and the membership-inference family (MUSE; DESIGN §8), from one teacher-forced
forward pass per text.

Texts: `privleak_forget` (members, label 1) and `privleak_holdout` (never trained on, label 0).
Per text, the scores of evaluate/mia.py (each: higher = looks less like a member):
  loss       mean NLL of the scored tokens (BOS excluded)
  zlib       mean NLL / zlib-compressed UTF-8 byte length
  mink{k}    Min-K%: minus the mean of the lowest k% token log-probs, for k in `privleak.mink`
  minkpp{k}  Min-K%++: minus the mean of the lowest k% of (log p - mu) / sigma, `privleak.minkpp`
Rows: `mia_{score}` / forget_vs_holdout / auc, the ROC AUC of forget vs holdout (about 0 for a
memorised forget set, MUSE's orientation), with a bootstrap CI that resamples texts within the
forget and holdout sets. Per-text scores go to samples.parquet (column `score`).

PrivLeak / forget = (AUC - AUC_retrain) / AUC_retrain × 100 on Min-K% with k = `privleak.k`
(40), AUC_retrain being a retrain model's `mia_mink{k}` AUC (EvalContext.references). Which
retrain model is `privleak.reference`:
  full     the full-precision retrain (quant scheme none), as MUSE and the seed paper define it;
           a quantized model, the quantized retrain included, is then compared with it, so the
           retrain model's own PrivLeak at a quant other than none is not 0 in general
  matched  the retrain model at the same quant; the retrain model's own PrivLeak is then 0
A list computes each: the first is metric `privleak` (what the tables show), the others
metric `privleak_<reference>` (a metric of its own, so that no table that picks PrivLeak by
metric and split averages two references); all with stat `privleak`. Every PrivLeak row names
its reference in columns `reference`, `reference_quant` and `reference_auc`. When this model
is the reference itself its own AUC is used (PrivLeak 0). The CI resamples this model's texts
with AUC_retrain held fixed.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np

from relapse.evaluate import mia
from relapse.evaluate.registry import MetricResult, register_metric

SPLIT = "forget_vs_holdout"
REFERENCES = ("full", "matched")


def reference_names(cfg: dict) -> list[str]:
    """The configured PrivLeak references (`privleak.reference`: one name or a list), the
    primary first."""
    ref = cfg.get("reference", "full")
    names = [ref] if isinstance(ref, str) else list(ref)
    if not names or len(set(names)) != len(names) or not set(names) <= set(REFERENCES):
        raise ValueError(f"evaluation.privleak.reference: {ref!r} is not allowed; allowed: "
                         f"{', '.join(REFERENCES)}, or a list of distinct ones")
    return names


def privleak_metric(name: str, names: list[str]) -> str:
    """`privleak` for the primary reference (the one the tables show), else `privleak_<name>`."""
    return "privleak" if name == names[0] else f"privleak_{name}"


def full_precision_quant(quants: dict[str, dict]) -> str | None:
    """The id of the full-precision cell (scheme none) among `quants` (quant id -> settings,
    relapse.grid.quant_settings), or None when the config has none."""
    return next((q for q, settings in quants.items() if settings["scheme"] == "none"), None)


def text_scores(scored, text: str, mink: list[int], minkpp: list[int]) -> dict[str, float]:
    """Every MIA score of one text, by name, from its TextScores."""
    out = {"loss": mia.loss_score(scored.logprobs),
           "zlib": mia.zlib_score(scored.logprobs, text)}
    for k in mink:
        out[f"mink{k}"] = mia.mink_score(scored.logprobs, k)
    for k in minkpp:
        out[f"minkpp{k}"] = mia.minkpp_score(scored.logprobs, scored.mu, scored.sigma, k)
    return out


def _auc(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> float:
    return mia.roc_auc(scores[idx], labels[idx])


def _privleak(scores: np.ndarray, labels: np.ndarray, auc_retrain: float, idx: np.ndarray) -> float:
    return mia.privleak(_auc(scores, labels, idx), auc_retrain)


def retrain_auc(frame, k: int) -> float:
    """AUC_retrain: the `mia_mink{k}` AUC row of the retrain model's metrics table."""
    rows = frame[(frame.metric == f"mia_mink{k}") & (frame.split == SPLIT) & (frame.stat == "auc")]
    if len(rows) != 1:
        raise ValueError(f"the retrain metrics have {len(rows)} mia_mink{k} AUC rows, expected 1: "
                         f"evaluate the retrain model with the privleak metric (k = {k}) first")
    return float(rows.value.iloc[0])


@register_metric("privleak")
def privleak(ctx) -> list[MetricResult]:
    cfg = ctx.cfg.get("privleak", {})
    k = cfg.get("k", 40)
    mink = sorted(set(cfg.get("mink", [10, 20, 40])) | {k})   # PrivLeak's own k always runs
    minkpp = sorted(set(cfg.get("minkpp", [40])))
    forget = ctx.split("privleak_forget", cfg.get("max_items"))
    holdout = ctx.split("privleak_holdout", cfg.get("max_items"))
    if not len(forget) or not len(holdout):
        raise ValueError("privleak needs texts in both privleak_forget and privleak_holdout")
    texts = list(forget.text) + list(holdout.text)
    labels = np.array([1] * len(forget) + [0] * len(holdout))
    sources = ["privleak_forget"] * len(forget) + ["privleak_holdout"] * len(holdout)
    pids = list(forget.pid) + list(holdout.pid)
    items = list(forget.index) + list(holdout.index)

    scored = ctx.scores(texts)
    per_text = [text_scores(s, t, mink, minkpp) for s, t in zip(scored, texts)]
    results = []
    for name in per_text[0]:
        values = np.array([row[name] for row in per_text])
        samples = [{"item": int(i), "pid": int(pid), "source": src, "member": int(y),
                    "n_tokens": s.n_tokens, "score": float(v)}
                   for i, pid, src, y, s, v in zip(items, pids, sources, labels, scored, values)]
        results.append(MetricResult(f"mia_{name}", SPLIT, "auc", values.tolist(), 1.0, samples,
                                    statistic=partial(_auc, values, labels),
                                    strata=labels.tolist()))

    values = np.array([row[f"mink{k}"] for row in per_text])
    names = reference_names(cfg)
    for name in names:
        if name in ctx.self_references:
            auc_ref, ref_quant = mia.roc_auc(values, labels), ctx.keys.get("quant")
        elif name in ctx.references:
            auc_ref = retrain_auc(ctx.references[name], k)
            ref_quant = str(ctx.references[name].quant.iloc[0])
        else:
            print(f"privleak: no {name} retrain metrics given, so no PrivLeak row against it "
                  "(the MIA AUCs are written)", file=sys.stderr)
            continue
        results.append(MetricResult(
            privleak_metric(name, names), "forget", "privleak", values.tolist(), 1.0,
            statistic=partial(_privleak, values, labels, auc_ref), strata=labels.tolist(),
            columns={"reference": name, "reference_quant": ref_quant,
                     "reference_auc": auc_ref}))
    return results
