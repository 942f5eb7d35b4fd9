"""The README's "What the default shows" numbers, from a finished `make run`, never by hand.

    python benchmarks/default_run.py collect [--results results] [--seconds S]
        copies the tables the README quotes into benchmarks/default_run/ (small CSVs + run.json)
    python benchmarks/default_run.py render [--write-readme]
        prints the README block rendered from benchmarks/default_run/, or writes it between the
        README's `<!-- default-run:begin -->` and `<!-- default-run:end -->` markers

tests/test_docs_links.py renders the block from the committed CSVs and fails when the README
differs, so a README number always comes from the committed reference run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "default_run"
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"
TABLES = ("retained.csv", "durability.csv", "selection.csv")
ARMS = {"synthbio": "`synthbio` (normally trained target)",
        "synthbio-qat": "`synthbio-qat` (target on the RTN-4 grid: a QAT / dequantized release)"}


def _short_hp(hp: str) -> str:
    """`alpha=5_beta=0.1_epochs=10_lr=0.0001_params=full` -> `lr=1e-4, 10 epochs`."""
    parts = dict(p.split("=", 1) for p in hp.split("_"))
    return f"lr={float(parts['lr']):.0e}".replace("e-0", "e-") + f", {parts['epochs']} epochs"


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    from relapse.io import atomic_file

    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def collect(results: Path, out: Path = OUT, seconds: float | None = None) -> None:
    from relapse.io import write_json
    from relapse.provenance import provenance

    out.mkdir(parents=True, exist_ok=True)
    tables = results / "tables"
    for name in TABLES:
        _write_csv(pd.read_csv(tables / name), out / name)
    # Representations of the attacked unlearned models at full precision, forget texts.
    frames = [pd.read_parquet(p) for p in sorted(results.glob("synthbio/*/*/s0/none-w16/repr.parquet"))]
    rep = pd.concat(frames, ignore_index=True)
    rep = rep[rep.measure.isin(["cka", "pca_similarity", "pca_shift_pc1"]) & (rep.split == "forget")]
    _write_csv(rep, out / "representations.csv")
    # Update survival of the selected hp's 4-bit RTN cell, per bench.
    chosen = pd.read_csv(tables / "selection.csv")
    rows = []
    for bench, hp in zip(chosen.bench, chosen.hp):
        diag = pd.read_parquet(results / bench / chosen.method[0] / hp / "s0" / "diagnostics.parquet")
        four = diag[diag.quant == "rtn-w4"]
        rows.append({"bench": bench, "hp": hp, "modules": len(four),
                     "median_update_survival": float(four.update_survival.median()),
                     "median_same_code_fraction": float(four.same_code_fraction.median()),
                     "median_delta_over_step": float(four.delta_over_step.median())})
    _write_csv(pd.DataFrame(rows), out / "survival.csv")
    write_json(out / "run.json", {"command": "make run", "seconds": seconds,
                                  **provenance({})})


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _ci(row, name: str) -> str:
    return f"{_pct(row[name])} [{100 * row[name + '_ci_low']:.1f}, {100 * row[name + '_ci_high']:.1f}]"


def render(src: Path = OUT) -> str:
    retained = pd.read_csv(src / "retained.csv")
    durability = pd.read_csv(src / "durability.csv")
    survival = pd.read_csv(src / "survival.csv").set_index("bench")
    rep = pd.read_csv(src / "representations.csv")
    run = json.loads((src / "run.json").read_text())
    chosen = pd.read_csv(src / "selection.csv")

    lines = ["| arm | full precision | RTN 8-bit | RTN 4-bit (g64) |", "|---|---:|---:|---:|"]
    for bench, label in ARMS.items():
        row = retained[(retained.bench == bench) & retained.hp.isin(chosen.hp)
                       & ~retained.method.isin(["retrain", "mean (GDR/KLR)"])].iloc[0]
        cells = [f"{row[f'{q} KnowMem_f']:.1f}% [{row[f'{q} KnowMem_f lo']:.1f}, "
                 f"{row[f'{q} KnowMem_f hi']:.1f}]" for q in ("none-w16", "rtn-w8", "rtn-w4")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    s, q = survival.loc["synthbio"], survival.loc["synthbio-qat"]
    sel = chosen[chosen.bench == "synthbio"].iloc[0]
    text = ["\n".join(lines), "",
            f"Selected hp: `{_short_hp(sel.hp)}` (KnowMem_r {sel.KnowMem_r:.1f} against the floor "
            f"{sel.floor_KnowMem_r:.1f}: {'meets it' if sel.meets_floor else 'none meets it'}). "
            f"On the normally trained target, 4-bit RTN brings nothing back (median update "
            f"survival {s.median_update_survival:.3f} over the {int(s.modules)} Linear modules); on "
            f"the target whose weights sit on the grid, the same unlearning is undone (survival "
            f"{q.median_update_survival:.3f}; {100 * q.median_same_code_fraction:.1f}% of the "
            f"weights keep the target's 4-bit code, Δ/step {q.median_delta_over_step:.2f}).", ""]
    head = ("| knowledge retained (`synthbio`) | full | worst 4-bit | relearn 20 steps on forget "
            "| 20 steps on the control | pruned 50% | retrain after the same relearning | "
            "label | label on held-out facts |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for _, r in durability[durability.bench == "synthbio"].iterrows():
        name = f"`{r.method}`" + (", selected" if r.selected else "") + f" (`{_short_hp(r.hp)}`)"
        rows.append(f"| {name} | {_ci(r, 'full')} | {_pct(r.worst_4bit)} | **{_ci(r, 'relearn_k20')}** "
                    f"| {_pct(r.control_k20)} | {_pct(r['prune_s0.5'])} | {_pct(r.retrain_relearn)} "
                    f"| {r.label} | {r.label_heldout} (recovery {_ci(r, 'recovery_heldout')}) |")
    text += ["\n".join(rows), ""]
    cka = rep[rep.measure == "cka"]
    by_ref = {ref: cka[cka.reference == ref].value for ref in ("target", "retrain")}
    pc1 = {ref: rep[(rep.measure == "pca_similarity") & (rep.reference == ref)].value
           for ref in ("target", "retrain")}
    text.append(
        f"Debiased linear CKA with the target on forget texts is "
        f"{by_ref['target'].min():.3f}–{by_ref['target'].max():.3f} over the layers of both models, "
        f"and with the retrain model {by_ref['retrain'].min():.3f}–{by_ref['retrain'].max():.3f}: "
        f"CKA cannot tell hidden from erased here. PC1 can: its cosine with the target's is "
        f"{pc1['target'].min():.2f}–{pc1['target'].max():.2f}, with the retrain model's "
        f"{pc1['retrain'].min():.2f}–{pc1['retrain'].max():.2f}. Cold run: {run['seconds']:.0f} s "
        f"on 2 cores "
        f"(`benchmarks/default_run/`, commit {str(run.get('git_commit', ''))[:7]}).")
    return "\n".join(text) + "\n"


def write_readme(block: str, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    from relapse.io import atomic_file

    with atomic_file(readme) as tmp:
        tmp.write_text(head + BEGIN + "\n" + block + END + rest.split(END, 1)[1])


def readme_block(readme: Path = ROOT / "README.md") -> str:
    return readme.read_text().split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--results", default=str(ROOT / "results"))
    c.add_argument("--seconds", type=float, default=None, help="the cold run's wall time")
    r = sub.add_parser("render")
    r.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "collect":
        collect(Path(args.results), OUT, args.seconds)
    else:
        block = render()
        write_readme(block) if args.write_readme else sys.stdout.write(block)


if __name__ == "__main__":
    main()
