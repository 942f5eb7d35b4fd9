"""What the hub-backed corpus kinds share: the source and revision from the config, a check at
validation for local snapshots, and split lookup with the hub's older names as fallbacks."""

from __future__ import annotations

from relapse.data.corpora.hub import CorpusError, LocalSnapshot, Source, is_local


def with_pid(frame):
    """The contract's per-item key (`pid`, what samples.parquet rows point back to)."""
    frame = frame.reset_index(drop=True)
    frame.insert(0, "pid", range(len(frame)))
    return frame


class HubCorpus:
    """A corpus read from a dataset repository. Subclasses set `kind`, `default_source(cfg)`
    and `wanted(cfg)`: contract split -> (config, [split names, preferred first], columns)."""

    kind = ""
    needs_tokenizer = False
    keys = ("source", "revision")      # the corpus keys it reads (config validation)

    def default_source(self, cfg: dict) -> str:
        raise NotImplementedError

    def wanted(self, cfg: dict, src: Source) -> dict[str, tuple[str, list[str], tuple[str, ...]]]:
        raise NotImplementedError

    def source(self, cfg: dict) -> Source:
        return Source(cfg.get("source") or self.default_source(cfg), cfg.get("revision"))

    def resolve(self, src: Source, cfg: dict) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        """contract split -> (config, split found, columns); the first name that exists, else an
        error naming the preferred one and what exists."""
        out = {}
        for name, (config, splits, columns) in self.wanted(cfg, src).items():
            found = next((s for s in splits if src.has(config, s)), None)
            if found is None:
                older = f", or its older name {', '.join(map(repr, splits[1:]))}" \
                    if len(splits) > 1 else ""
                try:
                    src.require(config, splits[0], f"for {name}{older}")
                except CorpusError as err:
                    raise CorpusError(f"corpus kind {self.kind}: {err}") from None
            out[name] = (config, found, columns)
        return out

    def check(self, cfg: dict) -> None:
        """At validation, only for a local snapshot (reading the hub's metadata would need the
        network on the submit host, so a hub source is checked by rule check_corpus): every
        config, split and column read, and no split empty, from the README and Parquet footers."""
        src = self.source(cfg)
        if is_local(src.source):
            snapshot = LocalSnapshot(src.source, src.revision)
            for config, split, columns in self.resolve(snapshot, cfg).values():
                snapshot.check_split(config, split, columns)

    def check_source(self, cfg: dict) -> dict:
        """Before any model is downloaded (rule check_corpus): every config and split the corpus
        reads exists at its source, hub or local, read from the repository's metadata only (no
        data file is downloaded); a local snapshot gets the full check of `check`. Returns what
        was resolved, for the job's record."""
        src = self.source(cfg)
        self.check(cfg)
        resolved = self.resolve(src, cfg)
        return {"source": src.source, "revision": src.revision, "local": is_local(src.source),
                "splits_used": {name: f"{config}/{split}"
                                for name, (config, split, _) in resolved.items()}}

    def load_all(self, cfg: dict):
        src = self.source(cfg)
        resolved = self.resolve(src, cfg)
        frames = {name: src.load(config, split, columns)
                  for name, (config, split, columns) in resolved.items()}
        record = {**src.record(), "splits_used": {name: f"{config}/{split}" for name,
                                                  (config, split, _) in resolved.items()}}
        return frames, record
