"""Check every cell's metrics.parquet before the report reads them, in a job of its own.

Snakemake removes a job's old outputs when the job starts, so a report that fails on a bad input
loses the previous tables and figures. The check runs first, as its own rule; when an input is
unreadable, holds another cell's rows, or repeats a cell, the check fails, naming the file, the
report job never starts, and the previous tables stay.

A cell's file claims the cell its path names (results/{bench}/{method}/{hp}/s{seed}/{quant}/
metrics.parquet, DESIGN §3); its rows must carry exactly those keys. Files outside that layout are
checked for one cell per file and no cell in two files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

CELL_KEYS = ("bench", "method", "hp", "seed", "quant")
LAYOUT = re.compile(r"(?:^|/)results/(?P<bench>[^/]+)/(?P<method>[^/]+)/(?P<hp>[^/]+)/"
                    r"s(?P<seed>\d+)/(?P<quant>[^/]+)/metrics\.parquet$")


class CellTableError(ValueError):
    """A metrics table the report must not read."""


def read_cell_keys(path: str | Path) -> pd.DataFrame:
    """The key columns of one metrics.parquet; an unreadable file is named."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
        missing = [k for k in CELL_KEYS if k not in names]
        if missing:
            raise CellTableError(f"{path}: not a metrics table of a cell (no column(s) "
                                 f"{', '.join(missing)}); delete it and rerun its evaluation")
        return pq.read_table(path, columns=list(CELL_KEYS)).to_pandas()
    except CellTableError:
        raise
    except Exception as err:        # pyarrow's ArrowInvalid, OSError, ...
        raise CellTableError(f"{path}: not a readable Parquet file ({err}); delete it and rerun "
                             "the evaluation that writes it") from None


def claimed_cell(path: str | Path) -> dict | None:
    m = LAYOUT.search(Path(path).as_posix())
    if not m:
        return None
    return {**m.groupdict(), "seed": int(m["seed"])}


def check_cells(paths: list[str | Path]) -> pd.DataFrame:
    """One row per file: its path, its cell's keys and its row count. Raises CellTableError on
    the first file that is unreadable, mixes cells, claims another cell than its path, or
    repeats a cell of an earlier file."""
    seen: dict[tuple, str] = {}
    rows = []
    for path in paths:
        keys = read_cell_keys(path)
        if not len(keys):
            raise CellTableError(f"{path}: no rows; delete it and rerun its evaluation")
        cells = keys.drop_duplicates()
        if len(cells) != 1:
            raise CellTableError(f"{path}: rows of {len(cells)} cells in one cell's table: "
                                 f"{cells.to_dict('records')}")
        cell = {k: cells.iloc[0][k] for k in CELL_KEYS}
        cell["seed"] = int(cell["seed"])
        claimed = claimed_cell(path)
        if claimed is not None and claimed != cell:
            wrong = {k: cell[k] for k in CELL_KEYS if claimed[k] != cell[k]}
            raise CellTableError(f"{path}: its rows are of another cell ({wrong}) than its path "
                                 "names (a copied file?); delete it and rerun its evaluation")
        key = tuple(cell[k] for k in CELL_KEYS)
        if key in seen:
            raise CellTableError(f"{path}: the same cell {cell} as {seen[key]}")
        seen[key] = str(path)
        rows.append({"path": str(path), **cell, "rows": len(keys)})
    return pd.DataFrame(rows, columns=["path", *CELL_KEYS, "rows"])


def write_cell_check(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    from relapse.io import atomic_file

    table = check_cells(paths)
    with atomic_file(out) as tmp:
        table.to_csv(tmp, index=False)
    return table
