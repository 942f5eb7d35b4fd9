"""Corpus kinds: a registry with one file per kind (synthetic, muse, tofu). Each kind maps its
source onto the data contract of DESIGN §5 (forget, retain, retain_eval, holdout, verbmem_forget,
knowmem_*_qa(+_icl), privleak_*), so that every method and metric runs on every corpus.

A kind is an object with
  kind             its name in `corpus.kind`
  needs_tokenizer  whether `build` cuts texts by tokens (the reference target's tokenizer)
  keys             the `corpus:` keys it reads (validation refuses another kind's keys)
  check(cfg)       cheap checks at config validation (a local source's configs and splits)
  build(cfg, tokenizer) -> (splits, record)   the prepared frames, and what the manifest keeps
  renders_qa       (optional) True for a kind that writes QA texts: its build also takes
                   `template=` (relapse.data.prompts), the reference models' prompt format
"""

from __future__ import annotations

import importlib
import pkgutil

_CORPORA: dict[str, object] = {}


def register_corpus(kind):
    _CORPORA[kind.kind] = kind
    return kind


def _load() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def corpus_kinds() -> list[str]:
    _load()
    return sorted(_CORPORA)


def get_corpus(kind: str):
    _load()
    if kind not in _CORPORA:
        raise KeyError(f"corpus kind {kind!r} is unknown; allowed: {', '.join(sorted(_CORPORA))}")
    return _CORPORA[kind]
