"""The LoRA setting's training sets: what a LoRA adapter was fine-tuned on (the *target*), and
what it should have been fine-tuned on (the *gold*), for three kinds of edit (LLMEraser,
arXiv 2412.00383):

  removal    the forget people's QA pairs are deleted;
  query      their questions were corrupted (another, made-up person's name) and are corrected;
  response   their answers were wrong (label noise: another value of the attribute) and are
             corrected.

Both sets also hold the QA pairs of `retain_people` retain people, unedited. One row per QA
instance: `target_text` (None when the target never saw it), `gold_text` (None when the gold
must not see it) and `edited`. Deterministic in `seed`. Each text is one finished example of
the bench's prompt template (relapse.data.prompts; `qa`, the format the LoRA setting's base is
trained in, "Question: {q}\nAnswer: {a}\n\n"), named in column `template`.
"""

from __future__ import annotations

import random

import pandas as pd

from relapse.data.synthetic import (ATTRIBUTES, CITIES, FIRST_NAMES, HOBBIES, INSTRUMENTS,
                                    PROFESSIONS, QUESTIONS, SURNAMES, UNIVERSITIES, YEARS)

TASKS = ("removal", "query", "response")
_VALUES = {"birth_city": CITIES, "birth_year": YEARS, "profession": PROFESSIONS,
           "university": UNIVERSITIES, "hobby": HOBBIES, "instrument": INSTRUMENTS}


def _wrong_value(attribute: str, right: str, rng: random.Random) -> str:
    return str(rng.choice([v for v in _VALUES[attribute] if str(v) != right]))


def _unused_name(taken: set[str], rng: random.Random) -> str:
    while True:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
        if name not in taken:
            return name


def lora_setting_items(people: pd.DataFrame, task: str, retain_people: int = 4,
                       edit_fraction: float = 1.0, seed: int = 0,
                       template: str | None = None) -> pd.DataFrame:
    """The instance table of one task (module docstring) from the prepared `people` split.
    `edit_fraction` of the forget people's QA pairs are edited (at least one)."""
    from relapse.data.prompts import get_template

    form = get_template(template)
    if task not in TASKS:
        raise ValueError(f"lora_setting.task: {task!r} is not allowed; allowed: {', '.join(TASKS)}")
    if not 0 < edit_fraction <= 1:
        raise ValueError(f"lora_setting.edit_fraction: {edit_fraction!r} must be in (0, 1]")
    retain = people[people.role == "retain"].sort_values("pid")
    if not 1 <= retain_people <= len(retain):
        raise ValueError(f"lora_setting.retain_people: {retain_people!r} must be in 1..{len(retain)} "
                         "(the corpus's retain people)")
    rng = random.Random(seed)
    retain = retain.iloc[sorted(rng.sample(range(len(retain)), retain_people))]
    forget = people[people.role == "forget"].sort_values("pid")
    rows = [{"pid": int(p.pid), "role": role, "attribute": a, "name": p.name,
             "question": QUESTIONS[a].format(name=p.name), "answer": str(getattr(p, a))}
            for role, frame in (("forget", forget), ("retain", retain))
            for p in frame.itertuples() for a in ATTRIBUTES]
    forget_rows = [i for i, r in enumerate(rows) if r["role"] == "forget"]
    n_edit = max(1, round(edit_fraction * len(forget_rows)))
    edited = set(sorted(rng.sample(forget_rows, n_edit)))
    # A corrupted question names one made-up person per forget person, never a real one.
    aliases = {}
    taken = set(people.name)
    for pid in sorted({rows[i]["pid"] for i in edited}):
        aliases[pid] = _unused_name(taken, rng)
        taken.add(aliases[pid])
    out = []
    for i, row in enumerate(rows):
        right = form.example(row["question"], row["answer"])
        target, gold = right, right
        if i in edited:
            if task == "removal":
                gold = None
            elif task == "query":
                wrong_q = QUESTIONS[row["attribute"]].format(name=aliases[row["pid"]])
                target = form.example(wrong_q, row["answer"])
            else:
                target = form.example(row["question"],
                                      _wrong_value(row["attribute"], row["answer"], rng))
        out.append({"item": i, **row, "edited": i in edited, "target_text": target,
                    "gold_text": gold, "template": form.name})
    return pd.DataFrame(out)


def prepare_lora_setting(data_dir, settings: dict, out_dir) -> None:
    """Write `items.parquet` and a manifest for a benchmark's `lora_setting`."""
    from pathlib import Path

    from relapse.data.prepare import data_template
    from relapse.io import atomic_dir, write_json
    from relapse.provenance import provenance

    people = pd.read_parquet(Path(data_dir) / "people.parquet")
    items = lora_setting_items(people, settings.get("task", "removal"),
                               int(settings.get("retain_people", 4)),
                               float(settings.get("edit_fraction", 1.0)), int(settings.get("seed", 0)),
                               template=data_template(data_dir))
    with atomic_dir(out_dir) as tmp:
        items.to_parquet(tmp / "items.parquet", index=False)
        write_json(tmp / "manifest.json", {
            "lora_setting": settings, "items": len(items), "edited": int(items.edited.sum()),
            "target_items": int(items.target_text.notna().sum()),
            "gold_items": int(items.gold_text.notna().sum()), **provenance(settings)})
