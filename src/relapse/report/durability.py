"""The durability table and the reversible / irreversible label (reads Parquet only).

Per attacked unlearned model (bench, method, hp; `selected` marks the hp the paper tables show),
knowledge retained = KnowMem_f(model, q, attack) / KnowMem_f(target, q), the target
un-attacked at the same quant q, side by side: at full precision, after the worst 4-bit scheme
(the one retaining most), after k steps of relearning on forget data, after the same k on the
control data, after pruning at sparsity s. The interval of each is the cell's bootstrap 95% CI
over items divided by the target's mean (the target held fixed).

The label (config `attacks.label`), at quant q (default: full precision) and k steps (default:
the largest relearned): with T the target's KnowMem_f, U the unlearned model's, F after relearning
on forget data, C after relearning on the control data,
    reversible   iff  F ≥ min_recovery · T  and  (C − U) < control_ratio · (F − U)  and  F > R
i.e. a few steps on the forget set bring back at least half of the target's knowledge, while
unrelated data of the same form brings back less than half as much: the knowledge was hidden.
R is the retrain model's KnowMem_f after the same relearning (`retrain_relearn`): relearning on
the forget set teaches its facts to a model that never saw them too, so knowledge that was only
hidden must come back beyond that (`beyond_retrain`, on by default; skipped when the retrain
model was not attacked). Otherwise irreversible; `undetermined` when a needed cell is missing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LABEL_DEFAULTS = {"steps": None, "min_recovery": 0.5, "control_ratio": 0.5,
                  "control": "holdout", "quant": None, "beyond_retrain": True}
KEYS = ["bench", "method", "hp", "seed"]


def _ratio(value: float, target: float) -> float:
    """value / target; NaN where the target knows nothing (no knowledge to retain)."""
    return value / target if target and not pd.isna(target) else float("nan")


def _knowmem_f(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame.metric == "knowmem") & (frame.split == "forget")
                 & (frame.stat == "rougeL_f1")]


def full_quant(quants) -> str:
    quants = list(dict.fromkeys(quants))
    return "none-w16" if "none-w16" in quants else sorted(quants)[0]


def label_rule(cfg: dict | None = None) -> str:
    c = {**LABEL_DEFAULTS, **(cfg or {})}
    return (f"reversible iff relearning on forget data recovers >= {c['min_recovery']:g} x the "
            f"target's KnowMem_f and the {c['control']} control recovers < "
            f"{c['control_ratio']:g} x as much (over the unlearned model's KnowMem_f)"
            + (", and beyond what the same relearning teaches the retrain model (when it was "
               "attacked)" if c["beyond_retrain"] else ""))


def label(target: float, unlearned: float, forget: float, control: float,
          cfg: dict | None = None, retrain: float = float("nan")) -> str:
    c = {**LABEL_DEFAULTS, **(cfg or {})}
    if any(pd.isna(v) for v in (target, unlearned, forget, control)) or target <= 0:
        return "undetermined"     # a missing cell, or a target that knows nothing to recover
    hidden = forget >= c["min_recovery"] * target and \
        (control - unlearned) < c["control_ratio"] * (forget - unlearned)
    if c["beyond_retrain"] and not pd.isna(retrain):
        hidden = hidden and forget > retrain
    return "reversible" if hidden else "irreversible"


def durability_table(attacks: pd.DataFrame, metrics: pd.DataFrame,
                     selection: pd.DataFrame | None = None,
                     cfg: dict | None = None) -> pd.DataFrame:
    """One row per attacked unlearned model (see the module docstring)."""
    c = {**LABEL_DEFAULTS, **(cfg or {})}
    att = _knowmem_f(attacks)
    cells = _knowmem_f(metrics)
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

    rows = []
    models = att[~att.method.isin(["target", "retrain"])][KEYS].drop_duplicates()
    for bench, method, hp, seed in models.itertuples(index=False):
        mine = att[(att.bench == bench) & (att.method == method) & (att.hp == hp)
                   & (att.seed == seed)]
        own = cells[(cells.bench == bench) & (cells.method == method) & (cells.hp == hp)
                    & (cells.seed == seed)]
        t0 = target(bench, q0)
        row = {"bench": bench, "method": method, "hp": hp, "seed": seed,
               "selected": (bench, method, hp) in chosen, "quant": q0, "target": t0}

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
        forget = one(at_q0[(at_q0.attack == "relearn") & (at_q0.attack_data == "forget")
                           & (at_q0.attack_steps == k)])
        control = one(at_q0[(at_q0.attack == "relearn") & (at_q0.attack_data == c["control"])
                            & (at_q0.attack_steps == k)])
        put(f"relearn_k{k}", forget, t0)
        put(f"control_k{k}", control, t0)
        for s in sparsities:
            put(f"prune_s{s:g}", one(at_q0[(at_q0.attack == "prune") & (at_q0.sparsity == s)]), t0)
        retrain = att[(att.bench == bench) & (att.method == "retrain") & (att.quant == q0)
                      & (att.attack == "relearn") & (att.attack_data == "forget")
                      & (att.attack_steps == k)]
        row["retrain_relearn"] = _ratio(float(retrain.value.mean()), t0) if len(retrain) \
            else float("nan")
        row["label"] = label(t0, base[0], forget[0], control[0], c,
                             float(retrain.value.mean()) if len(retrain) else float("nan"))
        row["rule"] = label_rule(c)
        rows.append(row)
    return pd.DataFrame(rows)


# --- Held-out recovery (relapse.data.relearn_split): the same columns, computed on KnowMem split
# forget_heldout (the forget people the relearning attack never trained on), suffixed
# `_heldout`, beside the in-sample ones above; `recovery` is what the relearned rows recorded.
HELDOUT = "forget_heldout"


def with_heldout(table: pd.DataFrame, attacks: pd.DataFrame, metrics: pd.DataFrame,
                 selection: pd.DataFrame | None = None, cfg: dict | None = None) -> pd.DataFrame:
    def as_forget(frame):
        return frame[frame.split == HELDOUT].assign(split="forget")

    if table.empty:
        return table
    rec = attacks[attacks.attack == "relearn"]
    rec = rec.groupby("bench").recovery.first() if "recovery" in rec else pd.Series(dtype=object)
    table = table.assign(recovery=table.bench.map(rec).fillna("in-sample"))
    if not (attacks.split == HELDOUT).any():
        return table
    held = durability_table(as_forget(attacks), as_forget(metrics), selection, cfg)
    cols = [c for c in held.columns if c.startswith(("target", "full", "relearn_k", "control_k",
                                                      "retrain_relearn", "label"))]
    names = {c: c.replace("_ci_", "_heldout_ci_") if "_ci_" in c else f"{c}_heldout"
             for c in cols}
    return table.merge(held[KEYS + cols].rename(columns=names), on=KEYS, how="left")


def to_markdown(table: pd.DataFrame) -> str:
    """Values with their intervals as `v [lo, hi]`, knowledge retained in %."""
    if table.empty:
        return "(no attacked unlearned model)\n"
    measures = [c for c in table.columns if f"{c}_ci_low" in table.columns]
    head = ["bench", "method", "hp", "selected"] + measures + ["retrain_relearn", "label"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r.bench), str(r.method), str(r.hp), "yes" if r.selected else ""]
        cells += [f"{100 * r[m]:.1f} [{100 * r[m + '_ci_low']:.1f}, {100 * r[m + '_ci_high']:.1f}]"
                  for m in measures]
        cells += [f"{100 * r.retrain_relearn:.1f}", str(r.label)]
        lines.append("| " + " | ".join(cells) + " |")
    rule = table.rule.iloc[0]
    held = "" if "recovery" not in table else (
        " Recovery: " + ", ".join(f"{b} {r}" for b, r in dict(zip(table.bench, table.recovery))
                                  .items()) + "."
        + (" `_heldout` columns: KnowMem_f on the forget people the relearning never saw, "
           "against the target's on them." if "target_heldout" in table else ""))
    return ("Knowledge retained (% of the target's KnowMem_f at the same quant, 95% CI over "
            f"items). Label: {rule}.{held}\n\n" + "\n".join(lines) + "\n")


def write_durability(attacks_path, metrics_path, selection_path, stem, labels_out,
                     cfg: dict | None = None) -> pd.DataFrame:
    from relapse.io import atomic_file

    selection = pd.read_csv(selection_path) if selection_path and Path(selection_path).exists() \
        else None
    attacks, metrics = pd.read_parquet(attacks_path), pd.read_parquet(metrics_path)
    table = with_heldout(durability_table(attacks, metrics, selection, cfg), attacks, metrics,
                         selection, cfg)
    with atomic_file(f"{stem}.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(f"{stem}.md") as tmp:
        Path(tmp).write_text(to_markdown(table))
    keep = ["bench", "method", "hp", "seed", "quant", "target", "full"] + \
        [c for c in table.columns if c.startswith(("relearn_k", "control_k"))
         and not c.endswith(("_ci_low", "_ci_high"))] + ["retrain_relearn", "label", "rule"] + \
        [c for c in ("recovery", "target_heldout", "full_heldout", "retrain_relearn_heldout",
                     "label_heldout") if c in table]
    with atomic_file(labels_out) as tmp:
        table.reindex(columns=keep).to_csv(tmp, index=False)
    return table
