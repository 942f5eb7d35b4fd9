"""The report's input check (relapse.report.cells): a metrics table that is unreadable, holds
another cell's rows, mixes cells or repeats one is refused, naming the file."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from relapse.report.cells import CellTableError, check_cells


def _cell(root, bench="b", method="ga", hp="lr=0.001", seed=0, quant="rtn-w4", rows=3):
    path = root / "results" / bench / method / hp / f"s{seed}" / quant / "metrics.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"bench": [bench] * rows, "method": method, "hp": hp, "seed": seed,
                  "quant": quant, "metric": "knowmem", "value": 1.0}).to_parquet(path)
    return path


def test_good_cells_are_listed(tmp_path):
    paths = [_cell(tmp_path), _cell(tmp_path, quant="none-w16", rows=2)]
    table = check_cells(paths)
    assert list(table.quant) == ["rtn-w4", "none-w16"] and list(table.rows) == [3, 2]


def test_garbage_bytes_are_named(tmp_path):
    path = _cell(tmp_path)
    path.write_bytes(b"\x00" * 4096)
    with pytest.raises(CellTableError, match=rf"{path}: not a readable Parquet file"):
        check_cells([_cell(tmp_path, quant="none-w16"), path])


def test_a_table_copied_from_another_cell_is_refused(tmp_path):
    source = _cell(tmp_path, quant="none-w16")
    copy = _cell(tmp_path, quant="rtn-w4")
    copy.write_bytes(source.read_bytes())
    with pytest.raises(CellTableError, match=r"another cell \(\{'quant': 'none-w16'\}\)"):
        check_cells([source, copy])


def test_mixed_and_repeated_cells_are_refused(tmp_path):
    path = _cell(tmp_path)
    frame = pd.read_parquet(path)
    pd.concat([frame, frame.assign(seed=1)]).to_parquet(path)
    with pytest.raises(CellTableError, match="rows of 2 cells"):
        check_cells([path])
    elsewhere = tmp_path / "copy" / "metrics.parquet"       # outside the layout: no claim
    elsewhere.parent.mkdir()
    first = _cell(tmp_path, quant="none-w16")
    elsewhere.write_bytes(first.read_bytes())
    with pytest.raises(CellTableError, match="the same cell"):
        check_cells([first, elsewhere])


def test_cli_exits_with_the_message(tmp_path):
    path = _cell(tmp_path)
    path.write_bytes(b"PAR1 not really")
    proc = subprocess.run([sys.executable, "-m", "relapse", "check-cells", "--out",
                           str(tmp_path / "cells.csv"), str(path)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and f"{path}: not a readable Parquet file" in proc.stderr
    assert not (tmp_path / "cells.csv").exists()


def test_concat_metrics_names_an_unreadable_file(tmp_path):
    from relapse.report.tables import concat_metrics

    good, bad = _cell(tmp_path), _cell(tmp_path, quant="none-w16")
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match=rf"{bad}: not a readable metrics table"):
        concat_metrics([good, bad])
