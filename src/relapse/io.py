"""Atomic output: every file or folder is written under a temporary name, then renamed.

A job killed half-way (OOM, SLURM time limit, Ctrl-C) therefore never leaves a partial output
that looks complete to Snakemake or to a later aggregation.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _remove_stale_temps(final: Path) -> None:
    """Delete what an earlier writer of `final` that was killed (SIGKILL, OOM killer: no
    cleanup ran) left beside it. Only one job writes a given output at a time (Snakemake), so a
    temporary of `final` that exists now is a dead writer's."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; rename it to `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link `src` to `dst` (a 7B checkpoint is 13-27 GB; a link costs nothing where both sit
    on one file system), else copy it. Safe because relapse never rewrites a file in place: every
    write goes to a new file that is renamed over the old name."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | os.PathLike, frame) -> None:
    """A DataFrame as CSV, without its index."""
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | os.PathLike, frame, metadata: dict[str, Any] | None = None) -> None:
    """Write a pandas frame as Parquet, with `metadata` as JSON strings in the file's key-value
    metadata (provenance travels with the file, not beside it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        for key, value in metadata.items():
            merged[f"relapse.{key}".encode()] = json.dumps(value, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """A Parquet file as a pandas frame; a truncated or corrupt file (a copy cut short, a disk
    that filled up) fails with a message naming the file and what to do, not a bare Arrow
    error."""
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        size = path.stat().st_size if path.exists() else 0
        raise ValueError(f"{path}: not a readable Parquet file ({size} bytes: {err}); it is "
                         "truncated or corrupt: delete it and rerun the rule that writes "
                         "it") from None


def require_rows(frame, path: str | os.PathLike, what: str):
    """`frame` (read from `path`), or a clear error when it has no rows."""
    if len(frame) == 0:
        raise ValueError(f"{path}: the {what} is empty (0 rows); check the corpus settings "
                         "(people, forget, holdout fractions) or the source data")
    return frame


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    out = {}
    for key, value in raw.items():
        key = key.decode()
        if key.startswith("relapse."):
            out[key[len("relapse."):]] = json.loads(value)
    return out
