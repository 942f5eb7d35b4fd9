"""MUSE (muse-bench/MUSE-News, muse-bench/MUSE-Books) onto the data contract (DESIGN §5, §12).

  raw/forget, retain1      -> forget, retain (cut into chunks of max_length tokens, MUSE: 2048)
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
from relapse.data.corpora.chunking import chunk_frame

SOURCES = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
MAX_LENGTH = 2048
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
        frames, record = self.load_all(cfg)
        max_length = cfg.get("max_length", MAX_LENGTH)
        splits = {}
        for name, frame in frames.items():
            columns = self.wanted(cfg)[name][2]
            frame = frame[list(columns)]
            if name in ("forget", "retain"):
                splits[name] = chunk_frame(frame, tokenizer, max_length)
            else:
                splits[name] = with_pid(frame) if not name.endswith("_icl") else \
                    frame.reset_index(drop=True)
        record["chunks"] = {name: {"documents": len(frames[name]), "chunks": len(splits[name]),
                                   "max_length": max_length} for name in ("forget", "retain")}
        return splits, record


register_corpus(Muse())
