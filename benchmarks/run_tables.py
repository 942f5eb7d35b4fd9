"""A finished run's tables and job times, kept in the repository so that README and docs numbers
come from a committed run, never by hand.

    python benchmarks/run_tables.py --run DIR --config config/defenses.yaml --name defenses_run \
        --tables ranking.csv metric_robustness.csv worst_case.csv revival.csv [--seconds S]
    python benchmarks/run_tables.py --render-ranking defenses_run [--write-readme]
    python benchmarks/run_tables.py --render-meta smollm2_fine_run [--write-doc]

copies DIR/results/tables/<table> into benchmarks/<name>/ and writes benchmarks/<name>/run.json:
the config and its hash, the commit the run's checkout was at, the wall seconds when given (a
runlog reports them), and per rule the number of jobs and their summed seconds from Snakemake's
`benchmark:` files (DIR/results/benchmarks/<rule>/**/*.tsv).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RANKING_BEGIN, RANKING_END = "<!-- defenses-run:begin -->", "<!-- defenses-run:end -->"


def rule_seconds(run: Path) -> dict[str, dict]:
    """rule -> {"jobs": n, "job_seconds": sum of the `s` column} over the run's benchmark files."""
    out: dict[str, dict] = {}
    for tsv in sorted((run / "results" / "benchmarks").glob("*/**/*.tsv")):
        rule = tsv.relative_to(run / "results" / "benchmarks").parts[0]
        seconds = float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])   # the last (re)run's time
        got = out.setdefault(rule, {"jobs": 0, "job_seconds": 0.0})
        got["jobs"] += 1
        got["job_seconds"] = round(got["job_seconds"] + seconds, 1)
    return out


def collect(run: Path, config: str, name: str, tables: list[str],
            seconds: float | None = None) -> Path:
    from relapse.io import atomic_file, write_json

    out = ROOT / "benchmarks" / name
    out.mkdir(parents=True, exist_ok=True)
    for table in tables:
        frame = pd.read_csv(run / "results" / "tables" / table)
        with atomic_file(out / table) as tmp:
            frame.to_csv(tmp, index=False)
    commit = subprocess.run(["git", "-C", str(run), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rules = rule_seconds(run)
    write_json(out / "run.json", {
        "config": config,
        "config_sha256": hashlib.sha256((run / config).read_bytes()).hexdigest()[:16],
        "commit": commit, "wall_seconds": seconds, "machine": {"cpus": 2},
        "rules": rules, "job_seconds": round(sum(r["job_seconds"] for r in rules.values()), 1),
        "tables": tables})
    return out


def _pct(row, name: str) -> str:
    return (f"{100 * row[name]:.1f} [{100 * row[name + '_ci_low']:.1f}, "
            f"{100 * row[name + '_ci_high']:.1f}]")


def render_ranking(name: str) -> str:
    """The README's durability-ranking table from benchmarks/<name>/ranking.csv and run.json."""
    import json

    frame = pd.read_csv(ROOT / "benchmarks" / name / "ranking.csv")
    run = json.loads((ROOT / "benchmarks" / name / "run.json").read_text())
    lines = ["| rank | method (selected lr) | full precision | worst 4-bit | relearn 20 steps "
             "(held-out facts) | pruned 50% | worst case | KnowMem_r | verdict |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for _, row in frame.sort_values("rank").iterrows():
        lr = dict(p.split("=", 1) for p in row.hp.split("_") if "=" in p).get("lr", "?")
        lines.append(
            f"| {row['rank']} | `{row.method}` ({float(lr):.0e}) | {_pct(row, 'full')} | "
            f"{_pct(row, 'worst_4bit')} | {_pct(row, 'relearn')} | {_pct(row, 'prune')} | "
            f"{_pct(row, 'worst')} | {row.knowmem_retain:.1f} | {row.verdict} |")
    wall = run.get("wall_seconds")
    lines += ["", f"Knowledge retained, % of the target's KnowMem_f at the same precision, with "
              f"its 95% item-bootstrap CI; one seed; `{run['config']}` at commit "
              f"{run['commit'][:7]}, {len(frame)} methods, "
              + (f"{wall / 60:.0f} min wall on 2 shared cores ({run['job_seconds'] / 60:.0f} "
                 f"min of job time)" if wall else f"{run['job_seconds'] / 60:.0f} min of job time")
              + f" (`benchmarks/{name}/`)."]
    return "\n".join(lines).replace("e-0", "e-")


META_BEGIN, META_END = "<!-- smollm2-fine:begin -->", "<!-- smollm2-fine:end -->"


def _ci(value, low, high, scale: float = 1.0, digits: int = 2) -> str:
    if pd.isna(value):
        return "—"
    if pd.isna(low) or pd.isna(high):
        return f"{scale * value:.{digits}f}"
    return f"{scale * value:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _cell(row, name: str) -> str:
    """A percentage with its CI from the columns name, name_ci_low, name_ci_high."""
    return _ci(row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"], 100, 1)


def _label(value) -> str:
    return value if isinstance(value, str) else "none"


def _hp_parts(hp: str) -> dict:
    return dict(p.split("=", 1) for p in hp.split("_") if "=" in p)


def _lr(hp: str) -> str:
    parts = _hp_parts(hp)
    return f"{parts.get('params', '?')} {float(parts.get('lr', 'nan')):.0e}".replace("e-0", "e-")


def _by_hp(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of the grid: method, then params, then lr."""
    key = frame.hp.map(lambda h: (_hp_parts(h).get("params", ""),
                                  float(_hp_parts(h).get("lr", "nan"))))
    return frame.assign(_key=key).sort_values(["method", "_key"], kind="stable")


def _selection_lines(base: Path) -> list[str]:
    """Every hp at full precision against the utility floor, and the one selected."""
    grid = pd.read_csv(base / "grid.csv")
    selection = pd.read_csv(base / "selection.csv")
    quant = selection["quant"].iloc[0]
    floor = float(selection["floor_KnowMem_r"].iloc[0])
    chosen = set(zip(selection.method, selection.hp))
    lines = [f"**Selection** at {quant} (KnowMem_f and KnowMem_r ×100; the utility floor is "
             f"KnowMem_r ≥ {floor:.1f}, `report.selection.min_retain_pct` of the target's):",
             "",
             "| method | hp | KnowMem_f | KnowMem_r | meets the floor | selected |",
             "|---|---|---:|---:|---|---|"]
    for _, r in _by_hp(grid[~grid.method.isin(["target", "retrain"])]).iterrows():
        f, knowmem_r = r[f"{quant} KnowMem_f"], r[f"{quant} KnowMem_r"]
        lines.append(f"| `{r.method}` | {_lr(r.hp)} | {f:.1f} | {knowmem_r:.1f} | "
                     f"{'yes' if knowmem_r >= floor else 'no'} | "
                     f"{'yes' if (r.method, r.hp) in chosen else ''} |")
    return lines + [""]


def render_meta(name: str) -> str:
    """A committed run's meta-evaluation (issue 26 items 1, 3, 4) as the docs show it: metric
    robustness per attack, the worst attack within the utility budget per unlearned model, and
    revival at every hp, from benchmarks/<name>/{metric_robustness,worst_case,revival}.csv."""
    import json

    base = ROOT / "benchmarks" / name
    run = json.loads((base / "run.json").read_text())
    rob = pd.read_csv(base / "metric_robustness.csv")
    attacks = [a for a in dict.fromkeys(rob.attack) if a != "harmonic mean"]
    lines = []
    if (base / "grid.csv").exists() and (base / "selection.csv").exists():
        lines += _selection_lines(base)
    lines += ["**Metric robustness**: open-unlearning's Q = min(m_before / m_after, 1) per "
             "quantization and pruning, R = min(Δ_retrain / Δ_unlearned, 1) per relearning, and "
             "their harmonic mean; 1 = the attack does not bring back what the metric measures. "
             "95% bootstrap CI over items and models:", "",
             "| metric | " + " | ".join(attacks) + " | harmonic mean | models |",
             "|---|" + "---:|" * (len(attacks) + 2)]
    keyed = rob.set_index(["metric", "split", "attack"])
    for (metric, split), group in rob.groupby(["metric", "split"], sort=False):
        cells = []
        for attack in attacks + ["harmonic mean"]:
            row = keyed.loc[(metric, split, attack)] if (metric, split, attack) in keyed.index \
                else None
            cells.append("—" if row is None else _ci(row.value, row.ci_low, row.ci_high))
        n = int(group.n_models.max())
        lines.append(f"| {metric} ({split}) | " + " | ".join(cells) + f" | {n} |")
    worst = pd.read_csv(base / "worst_case.csv")
    budget = float(worst.budget.dropna().iloc[0]) if worst.budget.notna().any() else float("nan")
    lines += ["", f"**Worst case within a {100 * budget:.0f}% utility budget**: per unlearned "
              "model, the attack that retains the most knowledge (% of the target's KnowMem_f) "
              "while its utility (KnowMem_r, % of the unattacked model's) stays within the budget, "
              "and the strongest attack overall:", "",
              "| method | hp | unattacked | attacks (within budget) | worst within budget | "
              "retained | utility | strongest overall | retained | breaks budget |",
              "|---|---|---:|---:|---|---:|---:|---|---:|---|"]
    for _, r in _by_hp(worst).iterrows():
        lines.append(
            f"| `{r.method}` | {_lr(r.hp)} | {_cell(r, 'unattacked')} | "
            f"{int(r.n_attacks)} ({int(r.n_within_budget)}) | {_label(r.chosen_label)} | "
            f"{_cell(r, 'chosen_retained')} | {_cell(r, 'chosen_utility_ratio')} | "
            f"{_label(r.strongest_label)} | {_cell(r, 'strongest_retained')} | "
            f"{'yes' if r.strongest_breaks_budget else 'no'} |")
    rev = pd.read_csv(base / "revival.csv")
    counts = rev.position.value_counts()
    lines += ["", "**Revival at every hp** (knowledge retained %, full precision → 4-bit, and "
              "the paired difference with its 95% CI; above/below: the CI excludes 0):", "",
              "| method | hp | scheme | full precision | 4-bit | 4-bit − full | position |",
              "|---|---|---|---:|---:|---:|---|"]
    for _, r in _by_hp(rev).iterrows():
        lines.append(f"| `{r.method}` | {_lr(r.hp)} | {r.quant} | {_cell(r, 'full')} | "
                     f"{_cell(r, 'quantized')} | {_cell(r, 'diff')} | {r.position} |")
    summary = ", ".join(f"{counts.get(p, 0)} {p}" for p in ("above", "on", "below", "undetermined")
                        if counts.get(p, 0))
    wall = run.get("wall_seconds")
    lines += ["", f"{len(rev)} points: {summary}. One seed; `{run['config']}` at commit "
              f"{run['commit'][:7]}; " + (f"{wall / 60:.0f} min wall, " if wall else "")
              + f"{run['job_seconds'] / 60:.0f} min of job time on 2 cores (`benchmarks/{name}/`)."]
    return "\n".join(lines)


def write_readme_block(block: str, begin: str, end: str, readme: Path = ROOT / "README.md"):
    from relapse.io import atomic_file

    text = readme.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with atomic_file(readme) as tmp:
        tmp.write_text(f"{head}{begin}\n{block}\n{end}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="the run's working directory")
    parser.add_argument("--config", help="its config, relative to --run")
    parser.add_argument("--name", help="benchmarks/<name>/ gets the copies")
    parser.add_argument("--tables", nargs="+")
    parser.add_argument("--seconds", type=float, default=None, help="the run's wall seconds")
    parser.add_argument("--render-ranking", metavar="NAME",
                        help="print the README ranking table of benchmarks/NAME/")
    parser.add_argument("--write-readme", action="store_true",
                        help="with --render-ranking: write it between the README's markers")
    parser.add_argument("--render-meta", metavar="NAME",
                        help="print the meta-evaluation tables of benchmarks/NAME/")
    parser.add_argument("--write-doc", action="store_true",
                        help="with --render-meta: write them between docs/real-models.md's "
                             "markers")
    args = parser.parse_args(argv)
    if args.render_meta:
        block = render_meta(args.render_meta)
        if args.write_doc:
            write_readme_block(block, META_BEGIN, META_END, ROOT / "docs" / "real-models.md")
        print(block)
        return
    if args.render_ranking:
        block = render_ranking(args.render_ranking)
        if args.write_readme:
            write_readme_block(block, RANKING_BEGIN, RANKING_END)
        print(block)
        return
    if not (args.run and args.config and args.name and args.tables):
        parser.error("--run, --config, --name and --tables are required to collect")
    print(collect(args.run, args.config, args.name, args.tables, args.seconds))


if __name__ == "__main__":
    main()
