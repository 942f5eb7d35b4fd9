"""Metric `lm_eval`: lm-evaluation-harness (EleutherAI's `lm-eval`) on the cell's model, in this
process, through its Python API: `simple_evaluate` with an `HFLM` that wraps the very model
object the evaluate stage loaded (so the quantized weights, an adapter kept beside a quantized
base, `evaluation.dtype` and the device apply exactly as for the other metrics), for the tasks
`evaluation.lm_eval.tasks` lists: `mmlu` (general utility), `wmdp_bio`, `wmdp_cyber`,
`wmdp_chem` (hazardous knowledge, WMDP, arXiv 2403.03218), or any task, group or tag lm-eval
knows. A task may read a local snapshot in the hub layout (`snapshots`; relapse.evaluate.
lmeval_tasks), for a cluster without internet.

The numbers are lm-eval's: for a multiple-choice task, an item is correct when the choice
continuation with the highest summed log-probability given the prompt is the answer (`acc`;
`acc_norm` too where the task defines it). Rows: metric `lm_eval`, split = lm-eval's name of
the task, subtask or group (`mmlu`, `mmlu_anatomy`, `wmdp_bio`), stat `acc`; value and `stderr`
(lm-eval's standard error) x100, as the papers quote MMLU and WMDP; `task` (the configured name), `subtask`,
`num_fewshot`, `max_items` (lm-eval's `limit`: the first max_items items of every leaf task),
`lm_eval_version`, `task_version` and `dataset` (the snapshot folder or hub id). A group's value
is lm-eval's aggregate; its interval resamples the items of its subtasks. The per-item scores of
each configured task are in samples.parquet (split = the task), which the report's intervals and
knowledge retained read. lm-eval is imported only here, inside the metric (its import and its
task index cost seconds).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from relapse.evaluate.registry import MetricResult, register_metric

SCALE = 100.0
STATS = ("acc", "acc_norm")


def _leaf_names(name: str, group_subtasks: dict) -> list[str]:
    members = group_subtasks.get(name)
    if not members:
        return [name]
    return [leaf for m in members for leaf in _leaf_names(m, group_subtasks)]


def _group_statistic(scores, strata, idx) -> float:
    """The unweighted mean of the subtasks' means over the items `idx` (lm-eval's aggregate of a
    group without weight_by_size)."""
    s, g = np.asarray(scores, dtype=float)[idx], np.asarray(strata)[idx]
    return float(np.mean([s[g == k].mean() for k in np.unique(g)]))


def run(model, tokenizer, lcfg: dict, batch_size: int) -> dict:
    """lm-eval's result dict for the configured tasks on `model` (samples logged)."""
    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from relapse.evaluate.lmeval_tasks import task_manager, task_specs

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"metric lm_eval runs a torch model; this cell's model is a "
                        f"{type(model).__name__} (evaluation.kernels: native on gguf runs "
                        "llama.cpp); allowed: kernels: dequantized for lm_eval")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=lcfg.get("batch_size", batch_size))
    return lm_eval.simple_evaluate(model=lm, tasks=task_specs(lcfg), task_manager=task_manager(),
                                   num_fewshot=lcfg.get("num_fewshot"),
                                   limit=lcfg.get("max_items"), log_samples=True)


def results_rows(res: dict, lcfg: dict, version: str) -> list[MetricResult]:
    """MetricResults from lm-eval's result dict: one per configured task and per subtask or
    subgroup of it, for each accuracy statistic it reports."""
    subtasks = res.get("group_subtasks", {})
    snapshots = lcfg.get("snapshots") or {}
    out = []
    for task in lcfg["tasks"]:
        below = [task] + [n for n in _descendants(task, subtasks)]
        for name in below:
            reported = res["results"].get(name, {})
            leaves = _leaf_names(name, subtasks)
            shots = sorted({res["n-shot"].get(leaf) for leaf in leaves} - {None})
            for stat in STATS:
                if f"{stat},none" not in reported:
                    continue
                scores, strata, items = [], [], []
                for k, leaf in enumerate(leaves):
                    for sample in sorted(res["samples"][leaf], key=lambda s: s["doc_id"]):
                        scores.append(float(sample[stat]))
                        strata.append(k)
                        items.append((leaf, sample))
                value = float(reported[f"{stat},none"])
                statistic = None
                if abs(np.mean(scores) - value) > 1e-9:
                    statistic = partial(_group_statistic, scores, strata)
                    if abs(statistic(np.arange(len(scores))) - value) > 1e-9:
                        raise ValueError(f"lm_eval {name} {stat}: lm-eval reports {value}, but "
                                         "its per-item scores average to neither the items' "
                                         "nor the subtasks' mean")
                stderr = reported.get(f"{stat}_stderr,none")
                columns = {"task": task, "subtask": name,
                           "stderr": float(stderr) * SCALE if isinstance(stderr, (int, float))
                           else float("nan"),
                           "num_fewshot": shots[0] if len(shots) == 1 else -1,
                           "max_items": lcfg.get("max_items"), "lm_eval_version": version,
                           "task_version": str(res.get("versions", {}).get(name, "")),
                           "dataset": snapshots.get(task, "hub")}
                # one sample row per item of the configured task, with every statistic
                samples = [] if name != task or stat != STATS[0] else [
                    {"item": i, "subtask": leaf, "doc_id": int(s["doc_id"]),
                     **{k: float(s[k]) for k in STATS if k in s},
                     "target": str(s.get("target")),
                     "loglikelihoods": [float(r[0]) for r in s.get("filtered_resps", [])]}
                    for i, (leaf, s) in enumerate(items)]
                out.append(MetricResult("lm_eval", name, stat, scores, SCALE, samples,
                                        statistic=statistic,
                                        strata=strata if statistic else None, columns=columns))
    return out


def _descendants(name: str, subtasks: dict) -> list[str]:
    out = []
    for member in subtasks.get(name, []):
        out += [member] + _descendants(member, subtasks)
    return out


@register_metric("lm_eval")
def lm_eval_metric(ctx) -> list[MetricResult]:
    from relapse.evaluate.lmeval_tasks import version

    lcfg = ctx.cfg.get("lm_eval", {})
    res = run(ctx.model, ctx.tokenizer, lcfg, ctx.batch_size)
    return results_rows(res, lcfg, version())
