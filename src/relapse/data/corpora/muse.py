"""MUSE (muse-bench/MUSE-News, muse-bench/MUSE-Books) onto the data contract (DESIGN §5, §12).

  raw/forget, retain1      -> forget, retain: `packing: stream` (default) MUSE's windows of
                              max_length tokens (2048) over the joined texts, as token ids;
                              `article` one sample per article (chunking.py)
  raw/retain2, holdout     -> retain_eval, holdout (whole texts; scoring.max_tokens cuts them)
  verbmem/forget           -> verbmem_forget (prompt, gt)
  knowmem/forget_qa(_icl), retain_qa(_icl) -> knowmem_{forget,retain}_qa(_icl) (question, answer)
  privleak/forget, holdout                 -> privleak_{forget,holdout} (text)

Older revisions of the hub repositories name the retain sets `retain2_qa` and `retain2_qa_icl`;
those are read when the new names are absent, and the manifest records which.
"""

from __future__ import annotations

from relapse.data.corpora import register_corpus
from relapse.data.corpora.base import HubCorpus, with_pid
from relapse.data.corpora.chunking import JOINER, PACKINGS, chunk_frame, pack_frame

SOURCES = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
MAX_LENGTH = 2048
PACKING = "stream"
TEXT, QA, VERB = ("text",), ("question", "answer"), ("prompt", "gt")


class Muse(HubCorpus):
    kind = "muse"
    needs_tokenizer = True
    keys = HubCorpus.keys + ("subset", "max_length")

    def default_source(self, cfg: dict) -> str:
        subset = cfg.get("subset", "news")
        if subset not in SOURCES:
            raise ValueError(f"corpus.subset: {subset!r} is not allowed; allowed: "
                             f"{', '.join(SOURCES)}")
        return SOURCES[subset]

    def wanted(self, cfg: dict, src=None):
        return {
            "forget": ("raw", ["forget"], TEXT),
            "retain": ("raw", ["retain1"], TEXT),
            "retain_eval": ("raw", ["retain2"], TEXT),
            "holdout": ("raw", ["holdout"], TEXT),
            "verbmem_forget": ("verbmem", ["forget"], VERB),
            "knowmem_forget_qa": ("knowmem", ["forget_qa"], QA),
            "knowmem_forget_qa_icl": ("knowmem", ["forget_qa_icl"], QA),
            "knowmem_retain_qa": ("knowmem", ["retain_qa", "retain2_qa"], QA),
            "knowmem_retain_qa_icl": ("knowmem", ["retain_qa_icl", "retain2_qa_icl"], QA),
            "privleak_forget": ("privleak", ["forget"], TEXT),
            "privleak_holdout": ("privleak", ["holdout"], TEXT),
        }

    def build(self, cfg: dict, tokenizer):
        if tokenizer is None:
            raise ValueError("corpus kind muse cuts its raw texts by tokens: it needs the "
                             "reference target's tokenizer")
        packing = cfg.get("packing", PACKING)
        if packing not in PACKINGS:
            raise ValueError(f"corpus.packing: {packing!r} is not allowed; allowed: "
                             f"{', '.join(PACKINGS)}")
        frames, record = self.load_all(cfg)
        max_length = cfg.get("max_length", MAX_LENGTH)
        splits = {}
        # What the manifest keeps of the training samples: their count is what an epoch is.
        record["packing"] = {"mode": packing, "max_length": max_length,
                             **({"joiner": JOINER} if packing == "stream" else {})}
        for name, frame in frames.items():
            columns = self.wanted(cfg)[name][2]
            frame = frame[list(columns)].reset_index(drop=True)
            if name in ("forget", "retain"):
                counts = {"documents": len(frame)}
                if packing == "stream":
                    splits[name], counts["tokens"] = pack_frame(frame, tokenizer, max_length)
                    counts["wrapped"] = int(splits[name].wrapped.sum())
                else:
                    splits[name] = chunk_frame(frame, tokenizer, max_length)
                record["packing"][name] = {**counts, "windows": len(splits[name])}
            else:
                splits[name] = with_pid(frame) if not name.endswith("_icl") else frame
        return splits, record


register_corpus(Muse())
