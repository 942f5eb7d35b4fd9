"""The world-fact probe of a pretrained base: which real-world facts (relapse.data.world) the
base answers in the KnowMem few-shot format of the bench's prompt template (relapse.data.
prompts). The data stage (`relapse prepare-data --base`) keeps those as the utility split
`world`; data preparation itself never loads a model, so the probe lives here and hands its
splits to relapse.data.prepare."""

from __future__ import annotations

from pathlib import Path

from relapse.data.world import WORLD_FACTS, WORLD_ICL, answered


def world_splits(model, tokenizer, shots: int = 3, batch_size: int = 16,
                 template: str | None = None):
    """(knowmem_world_qa, knowmem_world_qa_icl, every fact with the base model's output): the
    facts the base answers in the KnowMem few-shot format of `template` (default qa), greedy,
    32 new tokens."""
    import pandas as pd

    from relapse.data.prompts import get_template
    from relapse.models.generation import cut_at_stops, greedy_generate

    form = get_template(template)
    stops = form.stops
    prompts = [form.few_shot(WORLD_ICL[:shots], q, tokenizer) for q, _ in WORLD_FACTS]
    raw = greedy_generate(model, tokenizer, prompts, 32, batch_size, stop_strings=stops)
    checked = pd.DataFrame([{"item": i, "question": q, "answer": a,
                             "output": cut_at_stops(r, stops).strip(),
                             "answered": answered(cut_at_stops(r, stops), a)}
                            for i, ((q, a), r) in enumerate(zip(WORLD_FACTS, raw))])
    kept = checked[checked.answered].reset_index(drop=True)
    qa = pd.DataFrame({"pid": kept["item"].astype(int), "attribute": "world",
                       "question": kept.question, "answer": kept.answer})
    icl = pd.DataFrame(WORLD_ICL, columns=["question", "answer"])
    return qa, icl, checked


def probe_world(base_dir: str | Path, threads: int = 1, template: str | None = None) -> dict:
    """The world splits of the base model in `base_dir`: knowmem_world_qa (+ `_icl`) and
    world_check (every fact with the base's answer)."""
    from relapse.models.io import load_model
    from relapse.models.tokenizer import load_tokenizer
    from relapse.seeding import seed_everything

    seed_everything(0, threads)
    qa, icl, checked = world_splits(load_model(base_dir), load_tokenizer(base_dir),
                                    template=template)
    print(f"[data] world QA: the base answers {len(qa)} of {len(checked)} facts", flush=True)
    return {"knowmem_world_qa": qa, "knowmem_world_qa_icl": icl, "world_check": checked}


def prepare_data(bench: str, corpus: dict, out_dir: str | Path,
                 base_dir: str | Path | None = None, threads: int = 1,
                 tokenizer_dir: str | Path | None = None, heldout: float | None = None,
                 template: str | None = None) -> None:
    """The data stage (`relapse prepare-data`): relapse.data.prepare.prepare (`heldout`: the
    relearning split's held-out share, attacks.relearn.heldout), and with
    `base_dir` (a pretrained base model: `reference.kind: gguf`) the world splits of
    probe_world, written in the same atomic data folder (a synthetic corpus only, as before)."""
    from relapse.data.prepare import prepare
    from relapse.data.relearn_split import DEFAULT_HELDOUT

    extra = None if base_dir is None else (lambda: probe_world(base_dir, threads, template))
    prepare(bench, corpus, out_dir, tokenizer_dir=tokenizer_dir, extra_splits=extra,
            heldout=DEFAULT_HELDOUT if heldout is None else heldout, template=template)
