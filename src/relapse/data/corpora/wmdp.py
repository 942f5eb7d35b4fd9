"""WMDP's unlearning corpora (Li et al. 2024, arXiv 2403.03218) onto the data contract.

WMDP publishes its forget and retain texts beside its multiple-choice questions:
  cyber   cais/wmdp-corpora, configs cyber-forget-corpus and cyber-retain-corpus (public)
  bio     forget: cais/wmdp-bio-forget-corpus (access-gated on the hub: request access, then
          download it, or point `forget_source` at a local snapshot); retain: cais/wmdp-corpora,
          config bio-retain-corpus
each split `train`, column `text` (a paper's text). `subset` says which; `source` (the
wmdp-corpora repository) and `forget_source` (bio's forget repository) may be local snapshots in
the hub layout, as for MUSE and TOFU (relapse.data.corpora.hub).

Splits, as WMDP's RMU reads its corpora (one sample per text, the text's first `max_length`
tokens; its published run takes 150 batches of 4, hence `samples: 600`):
  forget, retain          the first `samples` texts of the forget and retain corpora
  holdout                 the next `eval_texts` forget texts (the hazardous domain, never trained)
  retain_eval             the next `eval_texts` retain texts (perplexity, never trained)
  privleak_forget/holdout the first `eval_texts` trained forget texts / holdout (membership)
There are no QA splits: the forget metric is WMDP's MCQ accuracy and utility MMLU, both through
metric lm_eval (tasks wmdp_bio or wmdp_cyber, and mmlu; config/wmdp.yaml), scored beside
perplexity.
"""

from __future__ import annotations

import pandas as pd

from relapse.data.corpora import register_corpus
from relapse.data.corpora.base import with_pid
from relapse.data.corpora.hub import CorpusError, LocalSnapshot, Source, is_local

CORPORA = "cais/wmdp-corpora"
BIO_FORGET = "cais/wmdp-bio-forget-corpus"
SUBSETS = ("bio", "cyber")
TEXT = ("text",)
SAMPLES, EVAL_TEXTS, MAX_LENGTH = 600, 100, 512


class Wmdp:
    kind = "wmdp"
    needs_tokenizer = True
    keys = ("source", "forget_source", "revision", "subset", "samples", "eval_texts",
            "max_length")

    def subset(self, cfg: dict) -> str:
        subset = cfg.get("subset", "cyber")
        if subset not in SUBSETS:
            raise ValueError(f"corpus.subset: {subset!r} is not allowed for kind wmdp; allowed: "
                             f"{', '.join(SUBSETS)}")
        return subset

    def wanted(self, cfg: dict) -> dict[str, tuple[Source, str, str]]:
        """forget / retain -> (source, config, split)."""
        subset, revision = self.subset(cfg), cfg.get("revision")
        corpora = Source(cfg.get("source") or CORPORA, revision)
        if subset == "cyber":
            if cfg.get("forget_source"):
                raise ValueError("corpus.forget_source: only read with subset bio (the cyber "
                                 f"forget corpus is in {CORPORA}, config cyber-forget-corpus)")
            forget = (corpora, "cyber-forget-corpus", "train")
        else:
            source = cfg.get("forget_source") or BIO_FORGET
            forget_src = Source(source, revision)
            forget = (forget_src, "default", "train")
        return {"forget": forget, "retain": (corpora, f"{subset}-retain-corpus", "train")}

    def check(self, cfg: dict) -> None:
        """A local snapshot's configs, splits and `text` column, at validation."""
        for name, (src, config, split) in self.wanted(cfg).items():
            if is_local(src.source):
                snapshot = LocalSnapshot(src.source, src.revision)
                try:
                    snapshot.check_split(config, split, TEXT)
                except CorpusError as err:
                    raise CorpusError(f"corpus kind wmdp, {name}: {err}") from None

    def check_source(self, cfg: dict) -> dict:
        self.check(cfg)
        wanted = self.wanted(cfg)
        for src, config, split in wanted.values():
            src.require(config, split)
        return {"source": ", ".join(dict.fromkeys(src.source for src, _, _ in wanted.values())),
                "sources": {n: src.source for n, (src, _, _) in wanted.items()},
                "splits_used": {n: f"{c}/{s}" for n, (_, c, s) in wanted.items()}}

    def build(self, cfg: dict, tokenizer):
        from relapse.data.corpora.chunking import chunk_text

        if tokenizer is None:
            raise ValueError("corpus kind wmdp cuts its texts by tokens: it needs the reference "
                             "target's tokenizer")
        samples = cfg.get("samples", SAMPLES)
        n_eval = cfg.get("eval_texts", EVAL_TEXTS)
        max_length = cfg.get("max_length", MAX_LENGTH)
        frames, record = {}, {"subset": self.subset(cfg), "files": {}}
        for name, (src, config, split) in self.wanted(cfg).items():
            texts = [t for t in src.load(config, split, TEXT).text if isinstance(t, str)
                     and t.strip()]
            if len(texts) < samples + n_eval:
                raise CorpusError(f"corpus kind wmdp, {name}: {src.source} {config}/{split} has "
                                  f"{len(texts)} texts; samples {samples} + eval_texts {n_eval} "
                                  "need more; allowed: smaller samples or eval_texts")
            # WMDP's RMU trains on each text's first max_length tokens
            frames[name] = [chunk_text(t, tokenizer, max_length)[0] for t in
                            texts[:samples + n_eval]]
            record["files"].update(src.record()["files"])
            record[f"{name}_source"] = src.source
        frame = lambda texts: with_pid(pd.DataFrame({"text": texts}))   # noqa: E731
        forget, retain = frames["forget"], frames["retain"]
        splits = {"forget": frame(forget[:samples]), "retain": frame(retain[:samples]),
                  "holdout": frame(forget[samples:]), "retain_eval": frame(retain[samples:]),
                  "privleak_forget": frame(forget[:n_eval]),
                  "privleak_holdout": frame(forget[samples:])}
        record.update({"samples": samples, "eval_texts": n_eval, "max_length": max_length})
        return splits, record


register_corpus(Wmdp())
