"""LLMEraser's agreement with the gold LoRA, one table for the run (results/tables/llmeraser.*).

Inputs, all Parquet: each llmeraser model's `agreement.parquet` (QA accuracy and NLL of the edited
instances' correct QA, teacher-forced, ΔW = BA distances, wall times, the residual the solve
really reached; written by relapse.unlearn.oneshot.llmeraser) and `solver_log.parquet` (the
solve's relative residual per iteration); every cell's `samples.parquet` of the LoRA-setting benches; and each bench's
`lora_setting/items.parquet` (which instances were edited). KnowMem on the edited items is the
evaluation's own (few-shot greedy answers, ROUGE-L F1 ×100) of the llmeraser cell, the gold
(`retrain`) and the `target` at the same quant, on the edited items' correct question and answer.

One row per llmeraser model × quant. Columns: keys (bench, task, method, hp, seed, solver,
damping = the λ target and gold were fit with and the update used, quant, quant_scheme, bits);
solve (solver_status; residual = ‖(H/n + λI)x − b‖/‖b‖ recomputed from the final x, as
agreement.parquet records it; logged_residual = the solver log's last row, which for CG is its
recursive estimate; iterations, seconds, gold_seconds, time_ratio = gold's retraining seconds /
llmeraser's); per model m in target,
gold, llmeraser: knowmem_edited_m, qa_accuracy_edited_m, nll_edited_m, delta_w_l2_m (‖ΔW_m‖_F)
and, for target and llmeraser, delta_w_l2_to_gold_m; and the agreement summaries
  knowmem_gap_closed = (KnowMem_llmeraser − KnowMem_target) / (KnowMem_gold − KnowMem_target)
      (NaN when gold and target score the same),
  knowmem_item_diff  = mean over edited items of |F1_llmeraser − F1_gold| ×100,
  delta_w_gap_closed = 1 − ‖ΔW_llmeraser − ΔW_gold‖ / ‖ΔW_target − ΔW_gold‖.
The teacher-forced, ΔW and time columns are the full-precision model's, repeated on every quant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from relapse import grid

if TYPE_CHECKING:     # pandas is imported where used: the Snakefile imports `plan` at parse time
    import pandas as pd

METHOD = "llmeraser"
TABLE_STEM = "results/tables/llmeraser"
OUTPUTS = {"table": f"{TABLE_STEM}.parquet", "markdown": f"{TABLE_STEM}.md"}
KEYS = ["bench", "task", "method", "hp", "seed", "solver", "damping"]


def plan(cfg: dict, lora_benches: list[str]) -> dict[str, list[str]]:
    """The collecting step's inputs (empty when the config runs no llmeraser on a LoRA-setting
    bench): each llmeraser model's unlearned/ folder, the samples.parquet of its cells and of
    its bench's target and gold (retrain) cells, and each bench's lora_setting/ folder."""
    if METHOD not in cfg["methods"]:
        return {}
    models = [m for m in grid.unlearned_models(cfg) if m[1] == METHOD and m[0] in lora_benches]
    if not models:
        return {}
    benches = sorted({m[0] for m in models})
    cells = [c for c in grid.cells(cfg) if c.bench in benches
             and c.method in (METHOD, *grid.BASELINES)
             and (c.method != METHOD or (c.bench, c.method, c.hp, c.seed) in models)]
    return {"unlearned": [f"results/{b}/{m}/{hp}/s{seed}/unlearned" for b, m, hp, seed in models],
            "samples": [f"{c.root}/{c.quant}/samples.parquet" for c in cells],
            "lora_setting": [f"results/{b}/lora_setting" for b in benches]}


def _agreement_wide(agreement: pd.DataFrame) -> pd.DataFrame:
    """One row per llmeraser model: `{metric}_{model}` columns from the long agreement rows."""
    a = agreement.copy()
    a["column"] = a.metric + "_" + a.model
    keys = ["bench", "method", "hp", "seed", "task", "damping"]
    wide = a.pivot_table(index=keys, columns="column", values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    renames = {"seconds_llmeraser": "seconds", "seconds_gold": "gold_seconds",
               "time_ratio_gold_over_llmeraser_llmeraser": "time_ratio",
               "solver_residual_llmeraser": "residual"}
    return wide.rename(columns=renames).drop(columns=["delta_w_l2_to_gold_gold"], errors="ignore")


def _solve(logs: pd.DataFrame) -> pd.DataFrame:
    """Final status, iteration count and last logged residual of each solve (its log's last
    row; the residual x really reaches is agreement.parquet's `solver_residual`)."""
    last = logs.sort_values("iteration").groupby(["bench", "method", "hp", "seed"]).tail(1)
    return last.rename(columns={"status": "solver_status", "iteration": "iterations",
                                "residual": "logged_residual"})[
        ["bench", "method", "hp", "seed", "solver", "solver_status", "logged_residual",
         "iterations"]]


def edited_knowmem(samples: pd.DataFrame, items: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-item KnowMem F1 (×100) on the edited items: rows (bench, method, hp, seed, quant,
    quant_scheme, bits, question, answer, f1), from the evaluation's knowmem samples joined on
    the edited items' correct question and answer."""
    import pandas as pd

    know = samples[samples.metric == "knowmem"]
    parts = []
    for bench, table in items.items():
        edited = table.loc[table.edited, ["question", "answer"]].drop_duplicates()
        got = know[know.bench == bench].merge(edited, on=["question", "answer"])
        parts.append(got.assign(f1=100 * got.rougeL_f1))
    cols = ["bench", "method", "hp", "seed", "quant", "quant_scheme", "bits", "question", "answer",
            "f1"]
    return pd.concat(parts)[cols] if parts else pd.DataFrame(columns=cols)


def _knowmem_rows(per_item: pd.DataFrame) -> pd.DataFrame:
    """Per llmeraser model × quant: mean KnowMem of it, the gold and the target on the edited
    items, their item count, and the mean per-item |llmeraser − gold|."""
    item = ["bench", "quant", "question", "answer"]
    base = {name: per_item[per_item.method == method].groupby(item).f1.mean().rename(f"f1_{name}")
            for name, method in (("gold", "retrain"), ("target", "target"))}
    ours = per_item[per_item.method == "llmeraser"]
    ours = ours.join(base["gold"], on=item).join(base["target"], on=item)
    keys = ["bench", "method", "hp", "seed", "quant", "quant_scheme", "bits"]
    rows = ours.groupby(keys).agg(
        knowmem_edited_llmeraser=("f1", "mean"), knowmem_edited_gold=("f1_gold", "mean"),
        knowmem_edited_target=("f1_target", "mean"), knowmem_edited_items=("f1", "size"))
    rows["knowmem_item_diff"] = (ours.f1 - ours.f1_gold).abs().groupby(
        [ours[k] for k in keys]).mean()
    return rows.reset_index()


def _closed(ours: float, start: float, goal: float) -> float:
    gap = goal - start
    return (ours - start) / gap if abs(gap) > 1e-9 else math.nan


def collect(agreement: pd.DataFrame, solver_logs: pd.DataFrame, samples: pd.DataFrame,
            items: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The llmeraser table (module docstring) from the concatenated inputs; `items`: each
    LoRA-setting bench's instance table."""
    wide = _agreement_wide(agreement).merge(_solve(solver_logs),
                                            on=["bench", "method", "hp", "seed"], how="left")
    wide["delta_w_gap_closed"] = 1 - wide.delta_w_l2_to_gold_llmeraser / wide.delta_w_l2_to_gold_target
    know = _knowmem_rows(edited_knowmem(samples, items))
    out = wide.merge(know, on=["bench", "method", "hp", "seed"], how="left")
    out["knowmem_gap_closed"] = [
        _closed(r.knowmem_edited_llmeraser, r.knowmem_edited_target, r.knowmem_edited_gold)
        for r in out.itertuples()]
    first = KEYS + ["quant", "quant_scheme", "bits", "solver_status", "residual",
                    "logged_residual", "iterations",
                    "seconds", "gold_seconds", "time_ratio"]
    first = [c for c in first if c in out]
    out = out[first + sorted(c for c in out if c not in first)]
    return out.sort_values(["bench", "solver", "damping", "hp", "seed", "bits"],
                           ascending=[True, True, True, True, True, False]).reset_index(drop=True)


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{-digits}g}" if digits < 0 else f"{value:.{digits}f}"
    return str(value)


def _arrow(row, metric: str, digits: int) -> str:
    """`target → llmeraser (gold)`."""
    t, l, g = (getattr(row, f"{metric}_{m}", math.nan) for m in ("target", "llmeraser", "gold"))
    return f"{_fmt(t, digits)} → {_fmt(l, digits)} ({_fmt(g, digits)})"


def full_precision(table: pd.DataFrame) -> pd.DataFrame:
    """The rows at the full-precision quant (scheme none, else the most bits)."""
    none = table[table.quant_scheme == "none"]
    if len(none):
        return none
    return table[table.bits == table.bits.max()] if len(table) else table


def _labels(table: pd.DataFrame) -> list[str]:
    """`solver` per row, plus the hp keys (and seed) that tell apart rows of one bench with the
    same solver and damping, e.g. `lissa scale=30`."""
    points = [grid.parse_hp_id(h) for h in table.hp]
    out = []
    for i, r in enumerate(table.itertuples()):
        same = [j for j, o in enumerate(table.itertuples())
                if (o.bench, o.solver, _fmt(o.damping, -3)) == (r.bench, r.solver, _fmt(r.damping, -3))]
        keys = sorted({k for j in same for k in points[j]} - {"solver", "damping"})
        differ = [k for k in keys if len({str(points[j].get(k, "–")) for j in same}) > 1]
        extra = [f"{k}={points[i].get(k, '–')}" for k in differ]
        if table.seed.nunique() > 1:
            extra.append(f"s{r.seed}")
        out.append(" ".join([str(r.solver)] + extra))
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """Two tables: the solve and agreement at full precision, and KnowMem on the edited items at
    every quant."""
    table = table.assign(label=_labels(table))
    lines = ["**LLMEraser against the gold LoRA retraining, on the edited items (full precision).** "
             "Each cell reads target → llmeraser (gold). KnowMem: few-shot greedy answers, "
             "ROUGE-L F1 ×100; QA acc and NLL: teacher-forced on the correct QA (0-shot). "
             "closed: share of the target→gold KnowMem gap the update closes; ‖ΔW−ΔW_gold‖: "
             "Frobenius distance of the effective update BA to the gold's. Time: the one-shot "
             "update vs the gold's LoRA retraining.", "",
             "| bench | task | solver | damping | status | residual | it | s | gold s | × faster "
             "| KnowMem | closed | QA acc | NLL | ‖ΔW−ΔW_gold‖ |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|---|"]
    for r in full_precision(table).itertuples():
        dw = (f"{_fmt(r.delta_w_l2_to_gold_target)} → "
              f"{_fmt(r.delta_w_l2_to_gold_llmeraser)}")
        lines.append(
            f"| {r.bench} | {r.task} | {r.label} | {_fmt(r.damping, -3)} | {r.solver_status} "
            f"| {_fmt(r.residual, -2)} | {_fmt(r.iterations)} | {_fmt(r.seconds, 1)} "
            f"| {_fmt(r.gold_seconds, 0)} | {_fmt(r.time_ratio, 1)} "
            f"| {_arrow(r, 'knowmem_edited', 1)} | {_fmt(r.knowmem_gap_closed)} "
            f"| {_arrow(r, 'qa_accuracy_edited', 2)} | {_arrow(r, 'nll_edited', 2)} | {dw} |")
    lines += ["", "**KnowMem on the edited items at each quant** (target → llmeraser (gold), the "
              "target and gold quantized the same way; |Δ| item: mean per-item |llmeraser − gold|).",
              "", "| bench | solver | damping | quant | KnowMem | closed | \\|Δ\\| item | items |",
              "|---|---|---:|---|---|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.bench} | {r.label} | {_fmt(r.damping, -3)} | {r.quant} "
                     f"| {_arrow(r, 'knowmem_edited', 1)} | {_fmt(r.knowmem_gap_closed)} "
                     f"| {_fmt(r.knowmem_item_diff, 1)} | {_fmt(r.knowmem_edited_items)} |")
    return "\n".join(lines) + "\n"


def write_llmeraser_tables(unlearned: list[str], samples: list[str], items: dict[str, str],
                           out_parquet: str | Path, out_md: str | Path,
                           cfg: dict | None = None) -> pd.DataFrame:
    """Read the inputs (`unlearned`: llmeraser unlearned/ folders; `items`: bench -> its
    lora_setting/ folder) and write the table as Parquet (with provenance) and Markdown."""
    import pandas as pd

    from relapse.io import atomic_file, write_parquet
    from relapse.provenance import provenance

    def concat(paths):
        return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)

    agreements, logs = [], []
    for folder in map(Path, unlearned):
        agreement = pd.read_parquet(folder / "agreement.parquet")
        agreements.append(agreement)
        # The solver log has no keys of its own: the agreement table beside it has them.
        keys = agreement[["bench", "method", "hp", "seed"]].iloc[0].to_dict()
        logs.append(pd.read_parquet(folder / "solver_log.parquet").assign(**keys))
    table = collect(pd.concat(agreements, ignore_index=True), pd.concat(logs, ignore_index=True),
                    concat(samples),
                    {bench: pd.read_parquet(Path(path) / "items.parquet")
                     for bench, path in items.items()})
    write_parquet(out_parquet, table, provenance(cfg or {}))
    with atomic_file(out_md) as tmp:
        tmp.write_text(to_markdown(table))
    return table
