"""The durability table and the reversibility verdict (reads Parquet only).

Per attacked unlearned model (bench, method, hp, seed; `selected` marks the hp the paper tables
show), knowledge retained = KnowMem_f(model, q, attack) / KnowMem_f(target, q), the target
un-attacked at the same quant q, side by side: at full precision, after the worst 4-bit scheme
(the one retaining most), after k steps of relearning on forget data, after the same k on the
control data, after pruning at sparsity s. Pruning is matched as quantization is:
`prune_s{s}` divides by the target pruned at the same s (the plan prunes it,
attacks.plan.matched_models), `prune_s{s}_vs_unpruned` by the un-pruned target. The interval of
each is the cell's bootstrap 95% CI over items divided by the reference's mean (held fixed).

The label (config `attacks.label`) is relapse.report.verdict's, at quant q (default: full
precision) and k steps (default: the largest relearned), from the models' per-item scores
(samples.parquet) paired by item: not forgotten, reversible, irreversible, inconclusive or
undetermined; every number and interval behind it is a column of the row. The forget split the
verdict reads (`split`, default `forget`: the KnowMem_f questions) is a parameter, so that a
second split of the same models can be judged the same way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relapse.report.verdict import QUANTITIES, VERDICT_DEFAULTS, verdict, verdict_rule

LABEL_DEFAULTS = {"steps": None, "control": "holdout", "quant": None, **VERDICT_DEFAULTS}
KEYS = ["bench", "method", "hp", "seed"]
SCORE = ("rougeL_f1", 100.0)     # KnowMem's per-item column in samples.parquet, and its scale


def _ratio(value: float, target: float) -> float:
    """value / target; NaN where the target knows nothing (no knowledge to retain)."""
    return value / target if target and not pd.isna(target) else float("nan")


def _knowmem(frame: pd.DataFrame, split: str = "forget") -> pd.DataFrame:
    return frame[(frame.metric == "knowmem") & (frame.split == split)
                 & (frame.stat == "rougeL_f1")]


def full_quant(quants) -> str:
    quants = list(dict.fromkeys(quants))
    return "none-w16" if "none-w16" in quants else sorted(quants)[0]


def settings(cfg: dict | None) -> dict:
    """attacks.label over the defaults; a key it does not have (e.g. the removed min_recovery,
    beyond_retrain: relapse.config.REMOVED_KEYS says why) is an error, not ignored."""
    unknown = sorted(set(cfg or {}) - set(LABEL_DEFAULTS))
    if unknown:
        raise ValueError(f"attacks.label: unknown key(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(LABEL_DEFAULTS)}")
    return {**LABEL_DEFAULTS, **(cfg or {})}


def label_rule(cfg: dict | None = None) -> str:
    c = settings(cfg)
    return (f"at k relearning steps, control data {c['control']}: " + verdict_rule(c))


def _item_scores(samples: pd.DataFrame | None, split: str, bench: str, method: str, hp: str,
                 quant: str, seed: int | None = None, attack: str = "none",
                 data: str = "none", steps: float = 0.0) -> pd.Series | None:
    """One cell's per-item scores (mean over seeds where `seed` is None), indexed by item."""
    if samples is None:
        return None
    hit = samples[(samples.split == split) & (samples.bench == bench)
                  & (samples.method == method) & (samples.hp == hp) & (samples.quant == quant)
                  & (samples.attack == attack) & (samples.attack_data == data)
                  & (samples.attack_steps == steps)]
    if seed is not None:
        hit = hit[hit.seed == seed]
    hit = hit.dropna(subset=[SCORE[0]])
    return hit.groupby("item")[SCORE[0]].mean() * SCORE[1] if len(hit) else None


def durability_table(attacks: pd.DataFrame, metrics: pd.DataFrame,
                     selection: pd.DataFrame | None = None, cfg: dict | None = None,
                     samples: pd.DataFrame | None = None, boot: dict | None = None,
                     split: str = "forget") -> pd.DataFrame:
    """One row per attacked unlearned model (see the module docstring). `samples`: per-item
    KnowMem scores of the cells (inputs.read_item_scores), which the verdict pairs; `boot`:
    evaluation.bootstrap; `split`: the KnowMem split measured and judged."""
    c = settings(cfg)
    att = _knowmem(attacks, split)
    cells = _knowmem(metrics, split)
    q0 = c["quant"] or full_quant(att.quant)
    relearned = att[att.attack == "relearn"]
    k = int(c["steps"] or (relearned.attack_steps.max() if len(relearned) else 0))
    sparsities = sorted(att[att.attack == "prune"].sparsity.dropna().unique())
    chosen = set() if selection is None else set(zip(selection.bench, selection.method,
                                                     selection.hp))

    def target(bench, quant):
        t = cells[(cells.bench == bench) & (cells.method == "target") & (cells.quant == quant)]
        return float(t.value.mean()) if len(t) else float("nan")

    def one(frame):
        if not len(frame):
            return (float("nan"),) * 3
        return float(frame.value.mean()), float(frame.ci_low.mean()), float(frame.ci_high.mean())

    def relearn_rows(frame, data):
        return frame[(frame.attack == "relearn") & (frame.attack_data == data)
                     & (frame.attack_steps == k)]

    rows = []
    models = att[~att.method.isin(["target", "retrain"])][KEYS].drop_duplicates()
    for bench, method, hp, seed in models.itertuples(index=False):
        mine = att[(att.bench == bench) & (att.method == method) & (att.hp == hp)
                   & (att.seed == seed)]
        own = cells[(cells.bench == bench) & (cells.method == method) & (cells.hp == hp)
                    & (cells.seed == seed)]
        t0 = target(bench, q0)
        row = {"bench": bench, "method": method, "hp": hp, "seed": seed,
               "selected": (bench, method, hp) in chosen, "quant": q0, "split": split,
               "target": t0}

        def put(name, value_low_high, t):
            v, lo, hi = value_low_high
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = \
                _ratio(v, t), _ratio(lo, t), _ratio(hi, t)

        base = one(own[own.quant == q0])
        put("full", base, t0)
        four = own[own.quant.str.endswith("-w4")]
        worst = None
        for quant, group in four.groupby("quant"):
            ratio = _ratio(float(group.value.mean()), target(bench, quant))
            if worst is None or ratio > worst[1] or pd.isna(worst[1]):
                worst = (quant, ratio, group)
        row["worst_4bit_quant"] = worst[0] if worst else None
        put("worst_4bit", one(worst[2]) if worst else (float("nan"),) * 3,
            target(bench, worst[0]) if worst else float("nan"))
        at_q0 = mine[mine.quant == q0]
        put(f"relearn_k{k}", one(relearn_rows(at_q0, "forget")), t0)
        put(f"control_k{k}", one(relearn_rows(at_q0, c["control"])), t0)
        for sp in sparsities:
            pruned = one(at_q0[(at_q0.attack == "prune") & (at_q0.sparsity == sp)])
            ref = att[(att.bench == bench) & (att.method == "target") & (att.quant == q0)
                      & (att.attack == "prune") & (att.sparsity == sp)]
            # matched: the target pruned at the same sparsity (NaN when it was not pruned)
            put(f"prune_s{sp:g}", pruned, float(ref.value.mean()) if len(ref) else float("nan"))
            put(f"prune_s{sp:g}_vs_unpruned", pruned, t0)
        retrain = relearn_rows(att[(att.bench == bench) & (att.method == "retrain")
                                   & (att.quant == q0)], "forget")
        row["retrain_relearn"] = _ratio(float(retrain.value.mean()), t0) if len(retrain) \
            else float("nan")

        def items(m, h, s=None, **attack):
            return _item_scores(samples, split, bench, m, h, q0, s, **attack)

        relearn = {"attack": "relearn", "steps": float(k)}
        row.update(verdict({
            "target": items("target", "default"),
            "unlearned": items(method, hp, seed),
            "relearned": items(method, hp, seed, data="forget", **relearn),
            "control": items(method, hp, seed, data=c["control"], **relearn),
            "retrain_relearned": items("retrain", "default", data="forget", **relearn),
        }, c, boot))
        row["rule"] = label_rule(c)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(r, m) -> str:
    return f"{100 * r[m]:.1f} [{100 * r[m + '_ci_low']:.1f}, {100 * r[m + '_ci_high']:.1f}]"


# --- Held-out recovery (relapse.data.relearn_split): the same columns and the same verdict,
# computed on KnowMem split forget_heldout (the forget people the relearning attack never trained
# on), suffixed `_heldout`, beside the in-sample ones; `recovery` is what the relearned rows
# recorded (`in-sample` where the corpus cannot hold facts out, e.g. MUSE).
HELDOUT = "forget_heldout"
HELDOUT_COLUMNS = ("target", "full", "relearn_k", "control_k", "retrain_relearn", "n_items",
                   "km_", *QUANTITIES, "label", "reason")


def with_heldout(table: pd.DataFrame, attacks: pd.DataFrame, metrics: pd.DataFrame,
                 selection: pd.DataFrame | None = None, cfg: dict | None = None,
                 samples: pd.DataFrame | None = None, boot: dict | None = None) -> pd.DataFrame:
    if table.empty:
        return table
    rec = attacks[attacks.attack == "relearn"]
    rec = rec.groupby("bench").recovery.first() if "recovery" in rec else pd.Series(dtype=object)
    # `relearn_facts`, not `recovery`: that name is the verdict's (F - U)/T
    table = table.assign(relearn_facts=table.bench.map(rec).fillna("in-sample"))
    if not (attacks.split == HELDOUT).any():
        return table
    held = durability_table(attacks, metrics, selection, cfg, samples, boot, HELDOUT)
    cols = [c for c in held.columns if c.startswith(HELDOUT_COLUMNS)]
    names = {c: c.replace("_ci_", "_heldout_ci_") if "_ci_" in c else f"{c}_heldout"
             for c in cols}
    return table.merge(held[KEYS + cols].rename(columns=names), on=KEYS, how="left")


def to_markdown(table: pd.DataFrame) -> str:
    """Values with their intervals as `v [lo, hi]`, knowledge retained in %; then the verdict's
    quantities (% of the target's KnowMem, paired intervals), the label and why."""
    if table.empty:
        return "(no attacked unlearned model)\n"
    measures = [c for c in table.columns if f"{c}_ci_low" in table.columns
                and c not in QUANTITIES]
    head = ["bench", "method", "hp", "selected"] + measures + ["retrain_relearn"] + \
        [f"verdict: {q}" for q in QUANTITIES] + ["label", "why"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r.bench), str(r.method), str(r.hp), "yes" if r.selected else ""]
        cells += [_cell(r, m) for m in measures]
        cells += [f"{100 * r.retrain_relearn:.1f}"] + [_cell(r, q) for q in QUANTITIES]
        cells += [str(r.label), str(r.reason)]
        lines.append("| " + " | ".join(cells) + " |")
    rule = table.rule.iloc[0]
    held = "" if "relearn_facts" not in table else (
        " Recovery: " + ", ".join(f"{b} {r}" for b, r in dict(zip(table.bench,
                                                                   table.relearn_facts))
                                  .items()) + "."
        + (" `_heldout` columns: KnowMem_f on the forget people the relearning never saw, "
           "against the target's on them, with their own verdict." if "target_heldout" in table
           else ""))
    return ("Knowledge retained (% of the target's KnowMem_f at the same quant; pruned: of the "
            "target pruned at the same sparsity, and `_vs_unpruned` of the un-pruned target; "
            "95% CI over items). Verdict quantities (% of T, 95% paired bootstrap over items): "
            "kept U/T, recovery (F-U)/T, beyond_control (r(F-U)-(C-U))/T, beyond_retrain "
            f"(F-R)/T. Label: {rule}.{held}\n\n" + "\n".join(lines) + "\n")


def write_durability(attacks_path, metrics_path, selection_path, stem, labels_out,
                     cfg: dict | None = None, samples: list[str] | None = None,
                     boot: dict | None = None) -> pd.DataFrame:
    """`samples`: the samples.parquet of the attacked and un-attacked cells the verdict pairs
    (attacks.plan.durability_samples)."""
    from relapse.io import atomic_file
    from relapse.report.inputs import read_item_scores

    selection = pd.read_csv(selection_path) if selection_path and Path(selection_path).exists() \
        else None
    attacks, metrics = pd.read_parquet(attacks_path), pd.read_parquet(metrics_path)
    items = read_item_scores(samples or [], "knowmem", {"forget", HELDOUT}, SCORE[0])
    table = with_heldout(durability_table(attacks, metrics, selection, cfg, items, boot, "forget"),
                         attacks, metrics, selection, cfg, items, boot)
    with atomic_file(f"{stem}.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(f"{stem}.md") as tmp:
        Path(tmp).write_text(to_markdown(table))
    verdict_columns = ["n_items"] + [c for c in table.columns if c.startswith("km_")] + \
        [f"{q}{end}" for q in QUANTITIES for end in ("", "_ci_low", "_ci_high")]
    keep = ["bench", "method", "hp", "seed", "quant", "split", "target", "full"] + \
        [c for c in table.columns if c.startswith(("relearn_k", "control_k"))
         and not c.endswith(("_ci_low", "_ci_high"))] + ["retrain_relearn"] + \
        verdict_columns + ["label", "reason", "rule"] + \
        [c for c in ("relearn_facts", "target_heldout", "full_heldout", "retrain_relearn_heldout",
                     "label_heldout", "reason_heldout") if c in table]
    with atomic_file(labels_out) as tmp:
        table.reindex(columns=keep).to_csv(tmp, index=False)
    return table
