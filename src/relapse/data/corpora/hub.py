"""Read one (config, split) of a dataset repository, from the hub or from a local snapshot.

A local snapshot is the repository's folder tree as is (its README.md `configs:` metadata and its
data files), so both go through the same `datasets.load_dataset(source, name, split=...,
revision=...)` call. What exists (configs, and each config's splits) is read from the repository's
metadata first, so that a missing config or split fails with a message that names the source,
the config, the split and what exists, instead of datasets' generic one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CorpusError(ValueError):
    """A corpus source that lacks a config or split the corpus needs."""


def is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _where(source: str, revision: str | None) -> str:
    return f"{source}@{revision}" if revision else source


def config_names(source: str, revision: str | None = None) -> list[str]:
    from datasets import get_dataset_config_names

    try:
        return list(get_dataset_config_names(source, revision=revision))
    except Exception as err:  # no network, unknown repository, unreadable metadata
        raise CorpusError(f"corpus source {_where(source, revision)!r}: cannot list its configs "
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
        data = load_dataset(self.source, name, split=split, revision=self.revision,
                            data_files={split: self.splits(name)[split]})
        frame = data.to_pandas()
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
