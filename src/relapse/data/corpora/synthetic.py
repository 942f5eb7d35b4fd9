"""The embedded default: fictitious people made here from a seed (relapse.data.synthetic)."""

from __future__ import annotations

from relapse.data.corpora import register_corpus


class Synthetic:
    kind = "synthetic"
    needs_tokenizer = False
    keys = ("people", "forget", "holdout", "retain_eval", "seed")   # the corpus keys it reads

    def check(self, cfg: dict) -> None:
        forget = cfg.get("forget", 0.1)
        if not isinstance(forget, (int, float)) or isinstance(forget, bool):
            raise ValueError(f"corpus.forget: {forget!r} is not allowed for kind synthetic; "
                             "allowed: a fraction of the people, between 0 and 1")

    def build(self, cfg: dict, tokenizer=None):
        from relapse.data.prepare import build_splits

        splits, roles = build_splits(cfg)
        return splits, {"roles": {k: len(v) for k, v in roles.items()}}


register_corpus(Synthetic())
