"""Read one (config, split) of a dataset repository, from the hub or from a local snapshot.

A local snapshot is the repository's folder tree as is (its README.md `configs:` metadata and its
data files), so both go through the same `datasets.load_dataset(source, name, split=...,
revision=...)` call. What exists (configs, and each config's splits) is read from the repository's
metadata first, so that a missing config or split fails with a message that names the source,
the config, the split and what exists, instead of datasets' generic one. At config validation
a local snapshot is read without datasets (LocalSnapshot: its README's `data_files` and its
Parquet footers), so a missing file, split or column, or an empty split, fails before any job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CorpusError(ValueError):
    """A corpus source that lacks a config or split the corpus needs."""


def is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def looks_local(source: str) -> bool:
    """Whether a `source:` names a local path rather than a hub id (`name` or `owner/name`): it
    starts with /, ~ or ., or has more than one /. Such a path must exist: taken for a hub id,
    a mistyped folder would fail only in the data job, with the hub's "Repo id must be..."."""
    return source.startswith(("/", "~", ".")) or source.count("/") > 1


def _where(source: str, revision: str | None) -> str:
    return f"{source}@{revision}" if revision else source


def config_names(source: str, revision: str | None = None) -> list[str]:
    from datasets import get_dataset_config_names

    try:
        return list(get_dataset_config_names(source, revision=revision))
    except Exception as err:  # no network, unknown repository, unreadable metadata
        raise CorpusError(f"corpus source {source!r} at revision {revision or 'main'}: cannot "
                          "list its configs "
                          f"({type(err).__name__}: {err}); expected a hub dataset id or a local "
                          "snapshot folder (README.md with `configs:` metadata)") from None


def split_files(source: str, name: str, revision: str | None = None,
                names: list[str] | None = None) -> dict[str, list[str]]:
    """split -> the data files that `load_dataset(source, name)` reads, for one config."""
    from datasets import load_dataset_builder

    names = config_names(source, revision) if names is None else names
    if name not in names:
        raise CorpusError(f"corpus source {_where(source, revision)!r}: no config {name!r}; "
                          f"configs there: {', '.join(names) or 'none'}")
    builder = load_dataset_builder(source, name, revision=revision)
    files = builder.config.data_files or {}
    return {str(split): [str(f) for f in paths] for split, paths in files.items()}


class Source:
    """One dataset repository at one revision; remembers every file it resolves, for the
    manifest and provenance."""

    def __init__(self, source: str, revision: str | None = None):
        self.source = str(Path(source).expanduser()) if is_local(source) else source
        self.revision = revision
        self._splits: dict[str, dict[str, list[str]]] = {}
        self._configs: list[str] | None = None

    def configs(self) -> list[str]:
        if self._configs is None:
            self._configs = config_names(self.source, self.revision)
        return self._configs

    def splits(self, name: str) -> dict[str, list[str]]:
        if name not in self._splits:
            self._splits[name] = split_files(self.source, name, self.revision, self.configs())
        return self._splits[name]

    def has(self, name: str, split: str) -> bool:
        try:
            return split in self.splits(name)
        except CorpusError:
            return False

    def require(self, name: str, split: str, why: str = "") -> None:
        found = self.splits(name)
        if split not in found:
            raise CorpusError(
                f"corpus source {_where(self.source, self.revision)!r}, config {name!r}: no split "
                f"{split!r}{f' ({why})' if why else ''}; splits there: "
                f"{', '.join(sorted(found)) or 'none'}")

    def load(self, name: str, split: str, columns: tuple[str, ...] = ()):
        """The split as a pandas DataFrame, checked to have `columns`."""
        from datasets import load_dataset

        self.require(name, split)
        # Only this split's files: datasets infers a config's features from its first file, and
        # the splits of TOFU's 2024 `default` config have different columns.
        try:
            data = load_dataset(self.source, name, split=split, revision=self.revision,
                                data_files={split: self.splits(name)[split]})
        except Exception as err:  # a failed download, an unreadable file
            raise CorpusError(f"corpus source {self.source!r} at revision "
                              f"{self.revision or 'main'}, config {name!r}, split {split!r}: "
                              f"cannot load it ({type(err).__name__}: {err})") from None
        frame = data.to_pandas()
        if not len(frame):
            raise CorpusError(f"corpus source {_where(self.source, self.revision)!r}, config "
                              f"{name!r}, split {split!r}: the split is empty")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise CorpusError(f"corpus source {_where(self.source, self.revision)!r}, config "
                              f"{name!r}, split {split!r}: no column(s) {missing}; columns there: "
                              f"{', '.join(frame.columns)}")
        return frame

    def record(self) -> dict[str, Any]:
        """What the manifest keeps: source, requested revision, and every resolved file (hub
        files are `hf://` paths that carry the resolved commit)."""
        from relapse.fingerprint import local_fingerprint

        local = is_local(self.source)
        return {"source": self.source, "revision": self.revision, "local": local,
                "source_sha256": local_fingerprint(self.source) if local else None,
                "files": {f"{name}/{split}": files for name, splits in self._splits.items()
                          for split, files in splits.items()}}


def _readme_configs(root: Path) -> dict[str, dict[str, list[str]]] | None:
    """config -> split -> the file patterns the README's `configs:` metadata lists (relative to
    the snapshot), or None when it lists none (datasets then infers the layout itself)."""
    import yaml

    readme = root / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)
    try:
        meta = yaml.safe_load(front[1]) if len(front) == 3 else None
    except yaml.YAMLError as err:
        raise CorpusError(f"corpus source {str(root)!r}: README.md metadata is not valid YAML "
                          f"({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("configs"), list) or not all(
            isinstance(c, dict) and c.get("data_files") for c in meta["configs"]):
        return None                    # e.g. `data_dir:` configs: datasets resolves those
    out: dict[str, dict[str, list[str]]] = {}
    for entry in meta["configs"]:
        files = entry.get("data_files", {})
        if isinstance(files, (str, list)) and not (isinstance(files, list) and files
                                                   and isinstance(files[0], dict)):
            files = {"train": files}
        elif isinstance(files, list):
            files = {f["split"]: f["path"] for f in files}
        out[entry.get("config_name", "default")] = {
            str(split): [paths] if isinstance(paths, str) else list(paths)
            for split, paths in files.items()}
    return out


class LocalSnapshot(Source):
    """A local snapshot checked without datasets, from its README's `configs:` metadata and its
    Parquet footers (no rows are read): config validation checks every (config, split, columns)
    that relapse reads, before any job. Without such metadata it answers as Source does."""

    def __init__(self, source: str, revision: str | None = None):
        super().__init__(source, revision)
        self.root = Path(self.source)
        self.meta = _readme_configs(self.root)
        for name, splits in (self.meta or {}).items():
            # A listed file that is no pattern, when missing, stops datasets from listing any
            # config ("cannot list its configs"): name it instead.
            for split, patterns in splits.items():
                for pattern in patterns:
                    if not any(c in pattern for c in "*?[") and not (self.root / pattern).exists():
                        self._missing(name, split, pattern)

    def _missing(self, name: str, split: str, pattern: str):
        raise CorpusError(
            f"corpus source {self.source!r}, config {name!r}, split {split!r}: README.md lists "
            f"{pattern!r} but no file there matches it (a partial download?); download the "
            "missing file, or the whole snapshot again")

    def configs(self) -> list[str]:
        return super().configs() if self.meta is None else list(self.meta)

    def splits(self, name: str) -> dict[str, list[str]]:
        if self.meta is None:
            return super().splits(name)
        if name not in self.meta:
            raise CorpusError(f"corpus source {self.source!r}: no config {name!r}; configs "
                              f"there: {', '.join(self.meta) or 'none'}")
        if name not in self._splits:
            found = {}
            for split, patterns in self.meta[name].items():
                files = []
                for pattern in patterns:
                    matched = sorted(str(p) for p in self.root.glob(pattern) if p.is_file())
                    if not matched:
                        self._missing(name, split, pattern)
                    files += matched
                found[split] = files
            self._splits[name] = found
        return self._splits[name]

    def check_split(self, name: str, split: str, columns: tuple[str, ...]) -> None:
        """The split's Parquet files hold rows and `columns` (other formats: not checked)."""
        import pyarrow.parquet as pq

        self.require(name, split)
        where = f"corpus source {self.source!r}, config {name!r}, split {split!r}"
        rows, seen = 0, None
        for path in self.splits(name)[split]:
            if not path.endswith(".parquet"):
                return
            try:
                meta = pq.ParquetFile(path)
            except Exception as err:   # a truncated download
                raise CorpusError(f"{where}: {path} is not a readable Parquet file "
                                  f"({type(err).__name__}: {err})") from None
            rows += meta.metadata.num_rows
            names = meta.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise CorpusError(f"{where}: no column(s) {missing} in {path}; columns there: "
                                  f"{', '.join(names)}")
            seen = path
        if seen is not None and rows == 0:
            raise CorpusError(f"{where}: the split is empty (0 rows in "
                              f"{', '.join(self.splits(name)[split])})")
