"""docs/results.md's three query examples of results/tables/metrics.parquet (DuckDB, pandas,
polars) run as written against a metrics table made by the report stage."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from test_report_paper import CFG, crafted_metrics


def readme_blocks(root) -> list[tuple[str, str]]:
    text = (root / "docs" / "results.md").read_text()
    section = text.split("## `results/tables/metrics.parquet`", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.fixture()
def in_results(tmp_path, monkeypatch):
    from relapse.report.build import with_keys
    from relapse.io import write_parquet

    metrics = with_keys(crafted_metrics())
    write_parquet(tmp_path / "results" / "tables" / "metrics.parquet", metrics, {"config": CFG})
    monkeypatch.chdir(tmp_path)
    return metrics


def test_readme_has_one_query_per_engine(root):
    blocks = readme_blocks(root)
    assert [lang for lang, _ in blocks] == ["sql", "python", "python"]
    assert "import pandas" in blocks[1][1] and "import polars" in blocks[2][1]


def test_duckdb_query(root, in_results):
    import duckdb

    sql = readme_blocks(root)[0][1]
    got = duckdb.sql(sql).df()
    f = in_results[(in_results.metric == "knowmem") & (in_results.split == "forget")]
    want = f.groupby(["method", "quant"]).value.mean().round(1)
    assert len(got) == len(want)
    for row in got.itertuples():
        assert row.knowmem_forget == pytest.approx(want[(row.method, row.quant)], abs=0.051)


def test_pandas_query(root, in_results):
    code = readme_blocks(root)[1][1]
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, scope)
    assert len(scope["f"]) == ((in_results.metric == "knowmem") & (in_results.split == "forget")).sum()
    assert "npo_gdr" in out.getvalue() and "bnb_nf4-w4" in out.getvalue()


def test_polars_query(root, in_results):
    code = readme_blocks(root)[2][1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    text = out.getvalue()
    r = in_results[(in_results.metric == "knowmem") & (in_results.split == "retain")]
    n = r.groupby(["method", "quant"]).ngroups
    assert f"shape: ({n}, 3)" in text and "ga_klr" in text
    mean = r[(r.method == "target") & (r.quant == "none-w16")].value.mean()
    assert f"{mean:.1f}" in text
