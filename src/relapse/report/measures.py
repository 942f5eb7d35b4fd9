"""The named quantities the paper tables show, and the seed-averaged wide frame they come from.

A *measure* is one (metric, split, stat) row family of metrics.parquet. `wide()` turns the tidy
table into one row per (bench, method, hp, quant) with a column per measure (mean over seeds)
and its 95% interval (intervals.py), plus `retained <measure>` = measure(unlearned, q) /
measure(target, q) at matched quant q with its paired-bootstrap interval.
Quant columns are read from the data: scheme names are never hard-coded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from relapse.report.intervals import retained_intervals, seed_mean_intervals


@dataclass(frozen=True)
class Measure:
    name: str        # column name in frames and CSV
    metric: str
    split: str
    stat: str
    label: str       # Markdown header
    tex: str         # LaTeX header


# The seed paper's four criteria (MUSE's C1-C4), in its column order.
MAIN = (
    Measure("VerbMem_f", "verbmem", "forget", "rougeL_f1", "M1 VerbMem_f ↓", r"M1 VerbMem$_f\downarrow$"),
    Measure("KnowMem_f", "knowmem", "forget", "rougeL_f1", "M2 KnowMem_f ↓", r"M2 KnowMem$_f\downarrow$"),
    Measure("PrivLeak", "privleak", "forget", "privleak", "M3 PrivLeak →0", r"M3 PrivLeak$\to0$"),
    Measure("KnowMem_r", "knowmem", "retain", "rougeL_f1", "M4 KnowMem_r ↑", r"M4 KnowMem$_r\uparrow$"),
)
# Utility on knowledge nobody trained or unlearned: the real-world facts a pretrained base
# answers (split `world`, relapse.data.world). Shown beside KnowMem_r when a run has it.
WORLD = Measure("KnowMem_world", "knowmem", "world", "rougeL_f1", "KnowMem_world ↑",
                r"KnowMem$_{world}\uparrow$")
# lm-evaluation-harness accuracies (metric lm_eval, x100): WMDP is forget-side (hazardous
# knowledge to remove), MMLU utility. Shown in the main tables when a run measured them.
LM_EVAL = (
    Measure("WMDP_bio", "lm_eval", "wmdp_bio", "acc", "WMDP-Bio ↓", r"WMDP-Bio$\downarrow$"),
    Measure("WMDP_cyber", "lm_eval", "wmdp_cyber", "acc", "WMDP-Cyber ↓",
            r"WMDP-Cyber$\downarrow$"),
    Measure("WMDP_chem", "lm_eval", "wmdp_chem", "acc", "WMDP-Chem ↓", r"WMDP-Chem$\downarrow$"),
    Measure("MMLU", "lm_eval", "mmlu", "acc", "MMLU ↑", r"MMLU$\uparrow$"),
)
# Quantities whose ratio to the target makes sense: the choices of `report.retained_metrics`.
RETAINABLE = {
    **{f"lm_eval_{m.split}": m for m in LM_EVAL},
    "knowmem_forget": Measure("KnowMem_f", "knowmem", "forget", "rougeL_f1", "KnowMem_f", r"KnowMem$_f$"),
    # KnowMem_f on the forget people the relearning attack never sees (relapse.data.relearn_split)
    "knowmem_forget_heldout": Measure("KnowMem_f_heldout", "knowmem", "forget_heldout", "rougeL_f1",
                                      "KnowMem_f (held-out)", r"KnowMem$_{f,\mathrm{ho}}$"),
    "verbmem_forget": Measure("VerbMem_f", "verbmem", "forget", "rougeL_f1", "VerbMem_f", r"VerbMem$_f$"),
    "verbmem_facts_forget": Measure("Facts_f", "verbmem_facts", "forget", "facts_recalled",
                                    "Facts_f", r"Facts$_f$"),
    "qa_em_forget": Measure("QA-EM_f", "qa_em", "forget", "exact_match", "QA-EM_f", r"QA-EM$_f$"),
    "knowmem_retain": Measure("KnowMem_r", "knowmem", "retain", "rougeL_f1", "KnowMem_r", r"KnowMem$_r$"),
}
KEYS = ["bench", "method", "hp", "quant"]
_QUANT_RE = re.compile(r"^(?P<name>.+)-w(?P<bits>\d+)$")
_REFERENCE_ORDER = {"target": 0, "retrain": 1}


def is_utility_constrained(method: str) -> bool:
    """GDR and KLR variants: unlearning with a retain-set regularizer (npo_gdr, ga_klr_sure, ...)."""
    return "_gdr" in method or "_klr" in method


def has_world(metrics: pd.DataFrame) -> bool:
    return bool(((metrics.metric == WORLD.metric) & (metrics.split == WORLD.split)).any())


def lm_eval_measures(metrics: pd.DataFrame) -> list[Measure]:
    """The LM_EVAL measures the run measured (metric lm_eval with that task)."""
    if "metric" not in metrics or not (metrics.metric == "lm_eval").any():
        return []
    return [m for m in LM_EVAL if not measure_rows(metrics, m).empty]


def main_measures(metrics: pd.DataFrame) -> list[Measure]:
    """The seed paper's four, KnowMem_world after KnowMem_r when the run measured it, then the
    WMDP and MMLU accuracies it measured."""
    return [*MAIN, WORLD][:5 if has_world(metrics) else 4] + lm_eval_measures(metrics)


def measures(retained: list[str] | tuple[str, ...] = (), world: bool = False,
             lm_eval: list[Measure] | tuple[Measure, ...] = ()) -> list[Measure]:
    """The main four (and KnowMem_world, and the lm_eval measures given), then every retained
    quantity not already among them."""
    out = ([*MAIN, WORLD] if world else list(MAIN)) + list(lm_eval)
    for key in retained:
        if RETAINABLE[key].name not in {m.name for m in out}:
            out.append(RETAINABLE[key])
    return out


def bootstrap_settings(bootstrap: dict | None) -> dict:
    """The intervals' bootstrap: config `evaluation.bootstrap` over the defaults."""
    return {"samples": 1000, "seed": 0, **(bootstrap or {})}


def measure_rows(metrics: pd.DataFrame, m: Measure) -> pd.DataFrame:
    """The metrics rows of one measure (its metric, split and statistic)."""
    return metrics[(metrics.metric == m.metric) & (metrics.split == m.split)
                   & (metrics.stat == m.stat)]


def wide(metrics: pd.DataFrame, retained: list[str] | tuple[str, ...] = ("knowmem_forget",),
         samples: pd.DataFrame | None = None, bootstrap: dict | None = None) -> pd.DataFrame:
    """One row per (bench, method, hp, quant): the seed mean of each measure (NaN when the run
    did not compute it), its 95% interval (`<name> lo`, `<name> hi`: over seeds and items, see
    intervals.py), and `retained <name>` with its `lo`/`hi` for each retained key. `samples`:
    the per-item scores (inputs.read_samples), without which retained has no interval;
    `bootstrap`: {samples, seed}. KnowMem_world is a column when the run measured it."""
    boot = bootstrap_settings(bootstrap)
    wanted = measures(retained, world=has_world(metrics), lm_eval=lm_eval_measures(metrics))

    def rows_of(m: Measure) -> pd.DataFrame:
        return measure_rows(metrics, m)

    frames = []
    for m in wanted:
        rows = rows_of(m)
        agg = rows.groupby(KEYS, sort=False)[["value"]].mean().rename(columns={"value": m.name})
        ci = seed_mean_intervals(rows, samples, m, boot)
        frames.append(agg.join(ci.rename(columns={"lo": f"{m.name} lo", "hi": f"{m.name} hi"})))
    cells = metrics[KEYS].drop_duplicates().set_index(KEYS)
    out = cells.join(frames, how="left") if frames else cells
    for m in wanted:      # measures absent from the whole run are still columns, all NaN
        for col in (m.name, f"{m.name} lo", f"{m.name} hi"):
            if col not in out:
                out[col] = float("nan")
    out = out.reset_index()
    target = out[out.method == "target"].set_index(["bench", "quant"])
    keys = list(zip(*(out[k] for k in KEYS)))
    for key in retained:
        m = RETAINABLE[key]
        ref = out.set_index(["bench", "quant"]).index.map(target[m.name].to_dict())
        ref = pd.Series(ref, index=out.index, dtype=float)
        out[f"retained {m.name}"] = out[m.name] / ref.where(ref != 0)
        ci = retained_intervals(rows_of(m), samples, m, boot)
        nan = (float("nan"), float("nan"))
        out[f"retained {m.name} lo"] = [ci.get(k, nan)[0] for k in keys]
        out[f"retained {m.name} hi"] = [ci.get(k, nan)[1] for k in keys]
    return out


def quant_order(metrics: pd.DataFrame) -> list[str]:
    """Quant ids present: full precision first, then schemes in order of first appearance, each
    from the most bits to the fewest."""
    quants = list(dict.fromkeys(metrics.quant))
    seen = list(dict.fromkeys(quant_parts(q)[0] for q in quants))
    names = sorted(seen, key=lambda n: (n != "none", seen.index(n)))
    return sorted(quants, key=lambda q: (names.index(quant_parts(q)[0]), -quant_parts(q)[1]))


def quant_parts(quant: str) -> tuple[str, int]:
    match = _QUANT_RE.match(quant)
    if not match:
        return quant, 0
    return match.group("name"), int(match.group("bits"))


def quant_label(quant: str) -> str:
    """`none-w16` -> `full (16-bit)`, `rtn-w4` -> `rtn 4-bit`, `bnb_nf4-w4` -> `bnb_nf4 4-bit`."""
    name, bits = quant_parts(quant)
    if name == "none":
        return f"full ({bits}-bit)"
    return f"{name} {bits}-bit" if bits else quant


def method_order(methods) -> list[str]:
    """target, retrain, then the unlearning methods in order of first appearance."""
    methods = list(dict.fromkeys(methods))
    return sorted(methods, key=lambda m: (_REFERENCE_ORDER.get(m, 2), methods.index(m)))

