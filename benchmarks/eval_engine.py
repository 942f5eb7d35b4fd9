"""The evaluation engine against a batch-1 loop that follows MUSE's procedure, on one model.

    .venv/bin/python benchmarks/eval_engine.py [--model DIR] [--data DIR] [--threads 1]

Runs the full metric set of the default config (KnowMem on forget/retain/holdout, VerbMem,
the MIA family and PrivLeak's Min-K% AUC, perplexity on retain_eval and holdout) twice:

  engine     the registered metrics: batched greedy generation (left padding, KV cache, a
             few-shot prefix shared by the batch forwarded once, stop strings) and batched
             teacher-forced scoring, one forward pass per distinct text;
  reference  a loop written here, one item at a time as MUSE's evaluation does: one `generate`
             per prompt to the full max_new_tokens, then the cut; for each PrivLeak text two
             forward passes (the text, for its loss and token log-probs, and the lowercased
             text, as MUSE's `inference` does for its PPL/lower score); one forward per
             perplexity text, with no sharing between the holdout of PrivLeak and of utility.

Both compute the metric values from scratch (the reference computes its scores and AUCs with
code of its own), and the script reports wall time, the speed-up, the share of identical greedy
outputs, the largest difference between the two runs' metric values, and forward passes per
scored text. Bootstrap CIs are left out of both timings. Writes benchmarks/eval_engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import zlib
from pathlib import Path

from relapse.io import write_json

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "results/synthbio/target/default/s0/none-w16/model"
DATA = ROOT / "results/synthbio/data"
MAX_ITEMS = None            # --max-items: a quick check of the script, not a benchmark
GENERATION = ("knowmem", "verbmem")
SCORING = ("privleak", "utility")


class ForwardCounter:
    """Counts forward calls of a model and the rows (sequences) they carry, per phase."""

    def __init__(self, model):
        self.phase, self.calls, self.rows = None, {}, {}
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls[self.phase] = self.calls.get(self.phase, 0) + 1
        self.rows[self.phase] = self.rows.get(self.phase, 0) + int(ids.shape[0])


# --- the engine ---------------------------------------------------------------------------------

def run_engine(model, tok, counter, cfg: dict) -> dict:
    from relapse.evaluate.registry import get_metric
    from relapse.evaluate.stage import EvalContext

    ctx = EvalContext(model, tok, DATA, cfg, cfg["batch_size"])
    seconds, values, outputs = {}, {}, {}
    for name in GENERATION + SCORING:
        counter.phase = f"engine:{name}"
        start = time.perf_counter()
        results = get_metric(name)(ctx)
        seconds[name] = time.perf_counter() - start
        for r in results:
            values[(r.metric, r.split)] = r.estimate(samples=0)[0] * r.scale
            for item in r.samples:
                if "output" in item:
                    outputs[(r.metric, r.split, item["item"])] = item["output"]
    return {"seconds": seconds, "values": values, "outputs": outputs}


# --- the batch-1 reference loop -----------------------------------------------------------------

def _generate_one(model, tok, prompt: str, max_new_tokens: int) -> str:
    import torch

    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _forward_one(model, tok, text: str):
    """MUSE's per-text pass: loss from `labels=ids`, and the logits' log-softmax, from which the
    token log-probs and the vocabulary mean/variance Min-K%++ needs are read."""
    import torch

    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
    p = logp.exp()
    token_lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
    mu = (p * logp).sum(-1)
    var = (p * logp.square()).sum(-1) - mu.square()
    return float(out.loss), token_lp.double().numpy(), mu.double().numpy(), var.double().numpy()


def _lowest_mean(values, k: int) -> float:
    ordered = sorted(values)
    n = max(1, len(ordered) * k // 100)
    return -sum(ordered[:n]) / n


def _pairwise_auc(member_scores, other_scores) -> float:
    wins = sum((a > b) + 0.5 * (a == b) for a in member_scores for b in other_scores)
    return wins / (len(member_scores) * len(other_scores))


def run_reference(model, tok, counter, cfg: dict) -> dict:
    import math

    import pandas as pd

    from relapse.data.prompts import STOPS, few_shot_prompt
    from relapse.evaluate.metrics.knowmem import normalize
    from relapse.models.generation import cut_at_stops
    from relapse.evaluate.metrics.verbmem import truncate_tokens
    from relapse.evaluate.rouge import rouge_l

    def split(name, cap=True):
        frame = pd.read_parquet(DATA / f"{name}.parquet")
        return frame.head(MAX_ITEMS) if cap and MAX_ITEMS else frame

    seconds, values, outputs = {}, {}, {}

    counter.phase = "reference:knowmem"
    start = time.perf_counter()
    km = cfg["knowmem"]
    for s in ("forget", "retain", "holdout"):
        qa, icl = split(f"knowmem_{s}_qa"), split(f"knowmem_{s}_qa_icl", cap=False)
        shots = list(zip(icl.question, icl.answer))[:km["shots"]]
        f1, em = [], []
        for i, q, a in zip(qa.index, qa.question, qa.answer):
            out = cut_at_stops(_generate_one(model, tok, few_shot_prompt(shots, q),
                                             km["max_new_tokens"]), STOPS)
            outputs[("knowmem", s, int(i))] = out
            f1.append(rouge_l(a, out)[0])
            em.append(float(normalize(out) == normalize(a)))
        values[("knowmem", s)] = 100 * sum(f1) / len(f1)
        values[("qa_em", s)] = sum(em) / len(em)
    seconds["knowmem"] = time.perf_counter() - start

    counter.phase = "reference:verbmem"
    start = time.perf_counter()
    vm = cfg["verbmem"]
    f1, facts = [], []
    for row in split("verbmem_forget").itertuples():
        out = _generate_one(model, tok, row.prompt, vm["max_new_tokens"])
        outputs[("verbmem", "forget", int(row.Index))] = out
        f1.append(rouge_l(truncate_tokens(tok, row.gt, vm["max_new_tokens"]), out)[0])
        facts.append(sum(f in out for f in row.facts) / len(row.facts) if len(row.facts) else 0.0)
    values[("verbmem", "forget")] = 100 * sum(f1) / len(f1)
    values[("verbmem_facts", "forget")] = sum(facts) / len(facts)
    seconds["verbmem"] = time.perf_counter() - start

    counter.phase = "reference:privleak"
    start = time.perf_counter()
    pl = cfg["privleak"]
    scores = {"member": [], "other": []}
    for role, name in (("member", "privleak_forget"), ("other", "privleak_holdout")):
        for text in split(name).text:
            loss, lp, mu, var = _forward_one(model, tok, text)
            _forward_one(model, tok, text.lower())      # MUSE's second pass (PPL/lower)
            row = {"loss": loss, "zlib": loss / len(zlib.compress(text.encode("utf-8")))}
            for k in sorted(set(pl["mink"]) | {pl["k"]}):
                row[f"mink{k}"] = _lowest_mean(lp.tolist(), k)
            z = [(a - m) / math.sqrt(v) if v > 0 else 0.0 for a, m, v in zip(lp, mu, var)]
            for k in pl["minkpp"]:
                row[f"minkpp{k}"] = _lowest_mean(z, k)
            scores[role].append(row)
    for name in scores["member"][0]:
        values[(f"mia_{name}", "forget_vs_holdout")] = _pairwise_auc(
            [r[name] for r in scores["member"]], [r[name] for r in scores["other"]])
    seconds["privleak"] = time.perf_counter() - start

    counter.phase = "reference:utility"
    start = time.perf_counter()
    for s in ("retain_eval", "holdout"):
        nll, n = 0.0, 0
        for text in split(s).text:
            _, lp, _, _ = _forward_one(model, tok, text)
            nll, n = nll - lp.sum(), n + lp.size
        values[("ppl", s)] = math.exp(nll / n)
    seconds["utility"] = time.perf_counter() - start
    return {"seconds": seconds, "values": values, "outputs": outputs}


# --- main ---------------------------------------------------------------------------------------

def main() -> None:
    global DATA, MAX_ITEMS
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the evaluate "
                        "rule's default is 1)")
    parser.add_argument("--max-items", type=int, default=None,
                        help="cap items per split (a quick check; the benchmark uses all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "eval_engine.json"))
    args = parser.parse_args()
    DATA, MAX_ITEMS = Path(args.data), args.max_items

    import pandas as pd
    import torch

    from relapse.config import load_config
    from relapse.models.io import load_model
    from relapse.models.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)["evaluation"]
    for name in GENERATION + SCORING:
        cfg.setdefault(name, {})["max_items"] = MAX_ITEMS
    model = load_model(args.model).eval()
    tok = load_tokenizer(args.model)
    counter = ForwardCounter(model)

    engine = run_engine(model, tok, counter, cfg)
    reference = run_reference(model, tok, counter, cfg)

    same = [engine["outputs"][key] == out for key, out in reference["outputs"].items()]
    diffs = {f"{m}/{s}": abs(engine["values"][(m, s)] - v)
             for (m, s), v in reference["values"].items()}
    scored = {"privleak": ("privleak_forget", "privleak_holdout"),
              "utility": ("retain_eval", "holdout")}
    texts = {m: [t for name in names
                 for t in list(pd.read_parquet(DATA / f"{name}.parquet").text)[:MAX_ITEMS]]
             for m, names in scored.items()}
    n_scored = sum(len(v) for v in texts.values())                 # text occurrences
    n_distinct = len({t for v in texts.values() for t in v})

    def per_text(run):
        """Rows forwarded (sequences, whatever the batching) per scored text."""
        rows = {m: counter.rows.get(f"{run}:{m}", 0) for m in SCORING}
        return {**{m: round(rows[m] / len(texts[m]), 3) for m in SCORING},
                "all": round(sum(rows.values()) / n_scored, 3),
                "per_distinct_text": round(sum(rows.values()) / n_distinct, 3)}

    def total(run):
        return sum(run["seconds"].values())

    result = {
        "model": os.path.relpath(args.model, ROOT), "data": os.path.relpath(DATA, ROOT),
        "threads": args.threads, "max_items": MAX_ITEMS,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "engine_s": round(total(engine), 2), "reference_s": round(total(reference), 2),
        "speedup": round(total(reference) / total(engine), 2),
        "per_metric": {m: {"engine_s": round(engine["seconds"][m], 2),
                           "reference_s": round(reference["seconds"][m], 2),
                           "speedup": round(reference["seconds"][m] / engine["seconds"][m], 1)}
                       for m in GENERATION + SCORING},
        "greedy_outputs": len(same), "identical_greedy_share": round(sum(same) / len(same), 4),
        "max_abs_metric_diff": max(diffs.values()),
        "metric_values": {f"{m}/{s}": round(v, 4) for (m, s), v in engine["values"].items()},
        "scored_texts": n_scored, "distinct_scored_texts": n_distinct,
        "forwards_per_scored_text": {"engine": per_text("engine"),
                                     "reference": per_text("reference")},
        "forward_calls": {phase: calls for phase, calls in sorted(counter.calls.items())},
        "note": ("PrivLeak itself needs the retrain model's AUC at the same quant; here the "
                 "Min-K% AUC it is computed from is compared. Timings share 2 cores with "
                 "whatever else runs."),
    }
    write_json(args.out, result)      # temp + rename: an interrupted run keeps the old file
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
