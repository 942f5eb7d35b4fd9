"""Paper tables, hp selection, LaTeX, figures and the report stage's files, on crafted frames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from relapse.report.measures import quant_label, quant_order
from relapse.report.selection import select_hps

QUANTS = {"none-w16": ("none", 16), "rtn-w8": ("rtn", 8), "rtn-w4": ("rtn", 4),
          "bnb_nf4-w4": ("bnb", 4)}
MEASURES = [("verbmem", "forget", "rougeL_f1"), ("knowmem", "forget", "rougeL_f1"),
            ("privleak", "forget", "privleak"), ("knowmem", "retain", "rougeL_f1")]
HPS = {"npo_gdr": ["alpha=1_lr=0.001_params=lora", "alpha=1_lr=0.003_params=lora",
                   "alpha=5_lr=0.001_params=full"],
       "ga_klr": ["alpha=1_lr=0.0001_params=full", "alpha=1_lr=0.0003_params=full"],
       "rmu": ["alpha=100_lr=0.001_params=full", "alpha=300_lr=0.001_params=full"]}


def crafted_metrics(seed: int = 0) -> pd.DataFrame:
    """Two benches, target + retrain + three methods (rmu never meets the KnowMem_r floor), two
    seeds per unlearned model, four quants of three schemes, random values."""
    rng = np.random.default_rng(seed)
    rows = []
    for bench in ("b1", "b1-qat"):
        models = [("target", "default", 0), ("retrain", "default", 0)]
        models += [(m, hp, s) for m, hps in HPS.items() for hp in hps for s in (0, 1)]
        for method, hp, s in models:
            for quant, (scheme, bits) in QUANTS.items():
                for metric, split, stat in MEASURES:
                    value = float(rng.uniform(20, 100))
                    if method == "target" and (metric, split) == ("knowmem", "retain"):
                        value = 95.0
                    if method == "rmu" and (metric, split) == ("knowmem", "retain"):
                        value = float(rng.uniform(10, 50))
                    elif (metric, split) == ("knowmem", "retain") and hp == HPS.get(method, [""])[0]:
                        value = 98.0 + s       # each constrained method has an hp above the floor
                    rows.append({"bench": bench, "method": method, "hp": hp, "params": "full",
                                 "seed": s, "quant": quant, "quant_scheme": scheme, "bits": bits,
                                 "metric": metric, "split": split, "stat": stat, "value": value,
                                 "ci_low": value - 5, "ci_high": value + 5, "n": 10,
                                 "seconds": 0.1})
    return pd.DataFrame(rows)


CFG = {"unlearning": {"loss_variant": "paper"},
       "quantization": {"schemes": [{"scheme": "none", "bits": [16]},
                                    {"scheme": "rtn", "bits": [8, 4], "group_size": 64},
                                    {"scheme": "bnb", "name": "bnb_nf4", "bits": [4],
                                     "quant_type": "nf4"}]},
       "report": {"retained_metrics": ["knowmem_forget", "verbmem_forget"],
                  "selection": {"quant": "none-w16", "min_retain_pct": 90}}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report stage run on the crafted cells (one parquet per cell, as the pipeline has)."""
    from relapse.report.build import build_report

    root = tmp_path_factory.mktemp("report")
    metrics = crafted_metrics()
    paths = []
    for i, (_, cell) in enumerate(metrics.groupby(["bench", "method", "hp", "seed", "quant"],
                                                  sort=False)):
        path = root / "cells" / f"{i}.parquet"
        path.parent.mkdir(exist_ok=True)
        cell.to_parquet(path, index=False)
        paths.append(str(path))
    build_report(paths, CFG, root / "tables" / "metrics.parquet", root / "tables",
                 root / "figures")
    return root, metrics


def _value(metrics, bench, method, hp, quant, metric, split):
    """Independent: the seed mean of one quantity, straight from the tidy rows."""
    rows = metrics[(metrics.bench == bench) & (metrics.method == method) & (metrics.hp == hp)
                   & (metrics.quant == quant) & (metrics.metric == metric)
                   & (metrics.split == split)]
    return rows.value.mean()


def _seed_values(metrics, bench, method, hp, quant, metric, split):
    rows = metrics[(metrics.bench == bench) & (metrics.method == method) & (metrics.hp == hp)
                   & (metrics.quant == quant) & (metrics.metric == metric)
                   & (metrics.split == split)]
    return list(rows.value)


def _independent_pick(metrics, bench, method, quant="none-w16", pct=90):
    floor = pct / 100 * _value(metrics, bench, "target", "default", quant, "knowmem", "retain")
    best = None
    for hp in HPS[method]:
        f = _value(metrics, bench, method, hp, quant, "knowmem", "forget")
        r = _value(metrics, bench, method, hp, quant, "knowmem", "retain")
        if r >= floor and (best is None or f < best[1]):
            best = (hp, f)
    if best is None:   # fallback: highest KnowMem_r
        best = (max(HPS[method], key=lambda hp: _value(metrics, bench, method, hp, quant,
                                                        "knowmem", "retain")), None)
    return best[0]


def test_every_number_of_the_main_table_equals_an_independent_computation(built):
    root, metrics = built
    table = pd.read_csv(root / "tables" / "main.csv")
    assert list(table.columns[:3]) == ["bench", "method", "hp"]
    # one row per model: per bench target, retrain, then the three methods
    assert table.method.tolist() == ["target", "retrain", "npo_gdr", "ga_klr", "rmu"] * 2
    names = {"VerbMem_f": ("verbmem", "forget"), "KnowMem_f": ("knowmem", "forget"),
             "PrivLeak": ("privleak", "forget"), "KnowMem_r": ("knowmem", "retain")}
    expected_cols = [f"{q} {n}" for q in ["none-w16", "rtn-w8", "rtn-w4", "bnb_nf4-w4"]
                     for n in names]
    intervals = [f"{c} {end}" for c in expected_cols for end in ("lo", "hi")]
    assert list(table.columns[3:]) == expected_cols + intervals
    checked = 0
    for row in table.to_dict("records"):
        bench, method, hp = row["bench"], row["method"], row["hp"]
        if method not in ("target", "retrain"):
            assert hp == _independent_pick(metrics, bench, method)
        for col in expected_cols:
            quant, name = col.split(" ")
            want = _value(metrics, bench, method, hp, quant, *names[name])
            assert row[col] == pytest.approx(want, rel=1e-12), (bench, method, col)
            # no per-item scores here: two seeds give the t-interval over seeds, one seed (the
            # baselines) its own item interval (value ± 5 in these rows)
            seeds = _seed_values(metrics, bench, method, hp, quant, *names[name])
            if len(seeds) > 1:
                low, high = sps.t.interval(0.95, len(seeds) - 1, loc=np.mean(seeds),
                                           scale=sps.sem(seeds))
            else:
                low, high = seeds[0] - 5, seeds[0] + 5
            assert (row[f"{col} lo"], row[f"{col} hi"]) == pytest.approx((low, high))
            checked += 1
    assert checked == 10 * 16


def test_main_table_flags_a_method_with_no_hp_above_the_floor(built):
    root, _ = built
    selection = pd.read_csv(root / "tables" / "selection.csv")
    assert not selection[selection.method == "rmu"].meets_floor.any()
    assert selection[selection.method != "rmu"].meets_floor.all()
    md = (root / "tables" / "main.md").read_text()
    assert "| rmu† |" in md and "no hp met the KnowMem_r floor" in md
    assert r"rmu$^\dagger$ &" in (root / "tables" / "main.tex").read_text()


def _frame(rows):
    return pd.DataFrame(rows, columns=["bench", "method", "hp", "quant", "KnowMem_f", "KnowMem_r"])


def test_selection_rule_on_a_crafted_frame():
    frame = _frame([
        ("b", "target", "default", "none-w16", 100, 80), ("b", "target", "default", "rtn-w4", 100, 60),
        # lowest KnowMem_f but below 90% of 80 = 72: excluded
        ("b", "npo_gdr", "over", "none-w16", 5, 70), ("b", "npo_gdr", "over", "rtn-w4", 90, 59),
        ("b", "npo_gdr", "good", "none-w16", 30, 72), ("b", "npo_gdr", "good", "rtn-w4", 80, 50),
        ("b", "npo_gdr", "mild", "none-w16", 60, 79), ("b", "npo_gdr", "mild", "rtn-w4", 70, 59),
        # no hp reaches 72: the highest KnowMem_r is taken and flagged
        ("b", "rmu", "x", "none-w16", 10, 40), ("b", "rmu", "y", "none-w16", 50, 65),
        ("b", "rmu", "x", "rtn-w4", 10, 40), ("b", "rmu", "y", "rtn-w4", 50, 65),
    ])
    chosen = select_hps(frame, {"quant": "none-w16", "min_retain_pct": 90}).set_index("method")
    assert chosen.loc["npo_gdr", "hp"] == "good" and chosen.loc["npo_gdr", "meets_floor"]
    assert chosen.loc["npo_gdr", "floor_KnowMem_r"] == pytest.approx(72)
    assert chosen.loc["rmu", "hp"] == "y" and not chosen.loc["rmu", "meets_floor"]
    # a looser floor admits the over-unlearned hp
    loose = select_hps(frame, {"quant": "none-w16", "min_retain_pct": 50}).set_index("method")
    assert loose.loc["npo_gdr", "hp"] == "over"
    # selecting at rtn-w4 (floor 54): over (59) and mild (59) qualify, mild has the lower KnowMem_f
    at4 = select_hps(frame, {"quant": "rtn-w4", "min_retain_pct": 90}).set_index("method")
    assert at4.loc["npo_gdr", "hp"] == "mild" and at4.loc["rmu", "hp"] == "y"
    with pytest.raises(ValueError, match="report.selection.quant: 'gptq-w4'"):
        select_hps(frame, {"quant": "gptq-w4"})


def test_quant_columns_are_read_from_the_data():
    frame = pd.DataFrame({"quant": ["rtn-w4", "gptq-w8", "none-w16", "rtn-w8", "gptq-w4",
                                    "bnb_nf4-w4", "bnb_fp4-w4"]})
    assert quant_order(frame) == ["none-w16", "rtn-w8", "rtn-w4", "gptq-w8", "gptq-w4",
                                  "bnb_nf4-w4", "bnb_fp4-w4"]
    assert quant_label("none-w16") == "full (16-bit)" and quant_label("bnb_nf4-w4") == "bnb_nf4 4-bit"


def test_retained_table_is_the_ratio_to_the_target_and_averages_gdr_klr(built):
    root, metrics = built
    table = pd.read_csv(root / "tables" / "retained.csv").fillna({"hp": ""})
    b1 = table[table.bench == "b1"].set_index("method")
    assert list(b1.index) == ["retrain", "npo_gdr", "ga_klr", "rmu", "mean (GDR/KLR)"]
    for quant in QUANTS:
        target = _value(metrics, "b1", "target", "default", quant, "knowmem", "forget")
        for method in ("npo_gdr", "ga_klr", "rmu"):
            hp = b1.loc[method, "hp"]
            want = 100 * _value(metrics, "b1", method, hp, quant, "knowmem", "forget") / target
            assert b1.loc[method, f"{quant} KnowMem_f"] == pytest.approx(want)
        # rmu is not utility-constrained: the mean is over npo_gdr and ga_klr only
        mean = (b1.loc["npo_gdr", f"{quant} VerbMem_f"] + b1.loc["ga_klr", f"{quant} VerbMem_f"]) / 2
        assert b1.loc["mean (GDR/KLR)", f"{quant} VerbMem_f"] == pytest.approx(mean)


def _data_rows(tex: str) -> list[str]:
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    return [line for line in body.splitlines()
            if line.endswith(r"\\") and not line.startswith(r"\multicolumn")]


def test_latex_is_well_formed(built):
    root, _ = built
    for name, labels, per in (("main", 1, 4), ("retained", 1, 2), ("grid", 2, 5)):
        tex = (root / "tables" / f"{name}.tex").read_text()
        begins = re.findall(r"\\begin\{(\w+\*?)\}", tex)
        ends = re.findall(r"\\end\{(\w+\*?)\}", tex)
        assert begins == ["table*", "tabular"] and ends == ["tabular", "table*"]
        assert tex.count("{") == tex.count("}")
        assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
        spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
        n_cols = labels + per * len(QUANTS)
        assert len(spec) == n_cols
        for line in _data_rows(tex):
            assert line.count("&") == n_cols - 1, line
        headers = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}\{c\}", tex)]
        assert sum(headers) == per * len(QUANTS)
        assert "\\_" in tex and "$_f" in tex     # escaped underscores, math subscripts kept
    main_rows = _data_rows((root / "tables" / "main.tex").read_text())
    methods = [line.split(" & ")[0] for line in main_rows]
    assert methods == ["target", "retrain", r"npo\_gdr", r"ga\_klr", r"rmu$^\dagger$"] * 2


def test_report_writes_exactly_the_files_the_rule_declares(built):
    from relapse.io import read_parquet_metadata
    from relapse.report.plan import outputs

    root, metrics = built
    written = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
               and p.parent.name in ("tables", "figures")}
    declared = {o.path.replace("results/", "", 1) for o in outputs().values()}
    assert written == declared
    for path in root.rglob("figures/*"):
        assert path.stat().st_size > 1000
    table = pd.read_parquet(root / "tables" / "metrics.parquet")
    assert len(table) == len(metrics) and (table.stage == "evaluate").all()
    assert {"hp_alpha", "hp_lr", "hp_params"} <= set(table.columns)
    meta = read_parquet_metadata(root / "tables" / "metrics.parquet")
    assert meta["config_hash"] and meta["git_commit"] and meta["versions"]["python"]
    assert meta["report"]["selection"]["min_retain_pct"] == 90


def test_a_bad_selection_quant_fails_validation(default_config):
    from relapse.config import ConfigError, validate

    cfg = {k: v for k, v in default_config.items()}
    cfg["report"] = {"selection": {"quant": "rtn-w3"}}
    with pytest.raises(ConfigError, match="report.selection.quant: 'rtn-w3'.*allowed: none-w16"):
        validate(cfg)


def test_selection_quant_defaults_to_the_closest_to_full_precision(default_config):
    """A config without none-w16 (e.g. only rtn-w4 and rtn-w8) selects at the most bits, instead
    of failing validation on a default it never asked for."""
    import copy

    from relapse.config import validate

    cfg = copy.deepcopy(default_config)
    cfg.pop("report", None)
    assert validate(copy.deepcopy(cfg))["report"]["selection"]["quant"] == "none-w16"
    cfg["quantization"]["schemes"] = [{"scheme": "rtn", "bits": [4, 8], "group_size": 64}]
    # no full-precision cell: PrivLeak's reference and the attack slice must follow
    cfg["evaluation"]["privleak"] = {**cfg["evaluation"].get("privleak", {}),
                                     "reference": "matched"}
    cfg["attacks"]["quants"] = cfg["attacks"]["represent"]["quants"] = ["rtn-w4"]
    assert validate(cfg)["report"]["selection"]["quant"] == "rtn-w8"


def test_world_knowledge_sits_beside_knowmem_r_when_measured(tmp_path):
    """A benchmark on a pretrained base measures KnowMem on real-world facts (split `world`):
    tables (a) and (c) show it right after KnowMem_r, with the run's own numbers."""
    from relapse.report.build import paper_tables, write_tables

    metrics = crafted_metrics()
    rng = np.random.default_rng(1)
    world = metrics[(metrics.metric == "knowmem") & (metrics.split == "retain")].copy()
    world["split"] = "world"
    world["value"] = rng.uniform(30, 60, len(world))
    metrics = pd.concat([metrics, world], ignore_index=True)
    tables, _, chosen, quants = paper_tables(metrics, CFG)
    write_tables(tables, chosen, tmp_path)

    main = pd.read_csv(tmp_path / "main.csv")
    cols = list(main.columns)
    for quant in quants:
        assert cols.index(f"{quant} KnowMem_world") == cols.index(f"{quant} KnowMem_r") + 1
    for row in main.to_dict("records"):
        for quant in quants:
            want = _value(metrics, row["bench"], row["method"], row["hp"], quant, "knowmem",
                          "world")
            assert row[f"{quant} KnowMem_world"] == pytest.approx(want, rel=1e-12)
    assert "none-w16 KnowMem_world" in pd.read_csv(tmp_path / "grid.csv").columns
    assert "KnowMem_world ↑" in (tmp_path / "main.md").read_text()
    tex = (tmp_path / "main.tex").read_text()
    assert r"KnowMem$_{world}\uparrow$" in tex and "real-world facts" in tex
    # without world rows the table keeps the paper's four columns (test above)
    plain, *_ = paper_tables(crafted_metrics(), CFG)
    assert [m.name for m in plain["main"].columns] == ["VerbMem_f", "KnowMem_f", "PrivLeak",
                                                       "KnowMem_r"]


def _write_cells(metrics: pd.DataFrame, folder) -> list[str]:
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, (_, cell) in enumerate(metrics.groupby(["bench", "method", "hp", "seed", "quant"],
                                                  sort=False)):
        paths.append(str(folder / f"{i}.parquet"))
        cell.to_parquet(paths[-1], index=False)
    return paths


def test_selection_step_picks_what_the_floor_allows_and_the_report_agrees(tmp_path):
    """quantization.models: selected. The checkpoint's pick, from the full-precision rows only,
    checked against a pick made here from the tidy rows; then the report, built on cells where
    only the picked hps were quantized, shows those hps and leaves the others' quantized columns
    empty."""
    from relapse.report.build import build_report
    from relapse.report.selection import read_selection, write_selection

    metrics = crafted_metrics()
    full = metrics[(metrics.quant == "none-w16")
                   & (metrics.method != "retrain")]
    chosen = write_selection(_write_cells(full, tmp_path / "full"), CFG, tmp_path / "sel.csv")

    def mean(bench, method, hp, split):
        rows = full[(full.bench == bench) & (full.method == method) & (full.hp == hp)
                    & (full.metric == "knowmem") & (full.split == split)]
        return rows.value.mean()

    expected = set()
    for bench in ("b1", "b1-qat"):
        floor = 0.9 * mean(bench, "target", "default", "retain")
        for method, hps in HPS.items():
            ok = [hp for hp in hps if mean(bench, method, hp, "retain") >= floor]
            pick = (min(ok, key=lambda hp: mean(bench, method, hp, "forget")) if ok
                    else max(hps, key=lambda hp: mean(bench, method, hp, "retain")))
            expected.add((bench, method, pick))
    assert set(zip(chosen.bench, chosen.method, chosen.hp)) == expected
    on_disk = read_selection(tmp_path / "sel.csv")
    assert on_disk == {(m, hp) for _, m, hp in expected}

    picked = {(b, m, hp) for b, m, hp in expected}
    is_picked = pd.Series([(b, m, hp) in picked for b, m, hp in
                           zip(metrics.bench, metrics.method, metrics.hp)], index=metrics.index)
    kept = metrics[(metrics.quant == "none-w16") | metrics.method.isin(["target", "retrain"])
                   | is_picked]
    root = tmp_path / "report"
    build_report(_write_cells(kept, tmp_path / "cells"), CFG, root / "tables" / "metrics.parquet",
                 root / "tables", root / "figures")
    report_pick = pd.read_csv(root / "tables" / "selection.csv")
    assert set(zip(report_pick.bench, report_pick.method, report_pick.hp)) == expected
    grid_csv = pd.read_csv(root / "tables" / "grid.csv")
    col = next(c for c in grid_csv.columns if c.startswith("rtn-w4") and "KnowMem_f" in c)
    unpicked = grid_csv[[m in HPS and (b, m, hp) not in picked
                         for b, m, hp in zip(grid_csv.bench, grid_csv.method, grid_csv.hp)]]
    assert len(unpicked) and unpicked[col].isna().all()
    assert grid_csv[[(b, m, hp) in picked for b, m, hp in
                     zip(grid_csv.bench, grid_csv.method, grid_csv.hp)]][col].notna().all()
