"""Preference pairs for the DPO-style forget objectives (objectives/dpo.py): each forget row
becomes (prompt x, rejected y_l, preferred y_w), y_l the forget answer and y_w an
"I don't know"-style answer from relapse/data/idk.yaml (relapse's own wording).

How a forget row is split:
- QA texts (a `prompt` column: TOFU, relapse.data.prompts): x is the question prompt, y_l the
  answer (+ EOS) exactly as the other methods train on it, and y_w is `prompt + idk` tokenized
  the same way (+ EOS), its prompt tokens unlabelled (relapse.models.batching.training_rows).
- Raw text (the synthetic biographies): there is no question, so the text is cut at a token:
  x = its first ⌊prompt_fraction · n⌋ tokens (n the text's tokens, BOS included, EOS not; at
  least BOS), y_l = the rest of the text (+ EOS), y_w = " " + idk (+ EOS) after the same x. The
  log-probabilities cover y only, so the first part of each text is not itself unlearned:
  prompt_fraction 0 makes x the BOS alone and y_l the whole text.
- MUSE's packed windows (an `input_ids` column) are cuts of a token stream at arbitrary places;
  an answer after such a cut is not an answer to anything, so they are refused here and in
  config validation (relapse.config).

Each row's idk answer is drawn once, from the run's seed (a fixed pairing over the epochs).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

IDK_FILE = "idk.yaml"


@lru_cache(maxsize=1)
def idk_answers() -> tuple[str, ...]:
    """The shipped "I don't know"-style answers (package data, relapse/data/idk.yaml)."""
    from importlib.resources import files

    import yaml

    answers = yaml.safe_load(files("relapse.data").joinpath(IDK_FILE).read_text())["answers"]
    return tuple(str(a) for a in answers)


def packed_refusal(method: str) -> str:
    return (f"{method} pairs each forget row with a preferred answer, which MUSE's packed token "
            "windows (cut at arbitrary places) have no place for; allowed corpora: synthetic, "
            "tofu")


def preference_rows(tokenizer, frame, rows, hp: dict[str, Any], seed: int, method: str = "dpo"):
    """(rejected rows, preferred rows, manifest entry) for the forget `frame`, whose training
    rows (relapse.models.batching.training_rows) are `rows`."""
    import pandas as pd
    import torch

    from relapse.models.batching import TrainingRow, training_rows

    if "input_ids" in frame.columns:
        raise ValueError(packed_refusal(method))
    answers = idk_answers()
    pick = torch.randint(len(answers), (len(rows),),
                         generator=torch.Generator().manual_seed(seed)).tolist()
    if "prompt" in frame.columns:
        prompts = [str(p) for p in frame.prompt]
        preferred = training_rows(tokenizer, pd.DataFrame(
            {"text": [p + answers[k] for p, k in zip(prompts, pick)], "prompt": prompts}))
        return list(rows), preferred, {"answers": len(answers), "split": "qa prompt"}
    fraction = float(hp["prompt_fraction"])
    eos = tokenizer.eos_token_id
    rejected, preferred = [], []
    for row, k in zip(rows, pick):
        body = row.ids[:-1] if row.ids and row.ids[-1] == eos else row.ids
        cut = max(1, int(fraction * len(body)))
        idk = tokenizer(" " + answers[k], add_special_tokens=False)["input_ids"]
        rejected.append(TrainingRow(row.ids, cut))
        preferred.append(TrainingRow(row.ids[:cut] + idk + [eos], cut))
    return rejected, preferred, {"answers": len(answers),
                                 "split": f"text prefix {fraction:g} of its tokens"}


def preferred_view(batch: dict) -> dict:
    """The preferred sequences of a forget batch, as a batch of their own."""
    return {"input_ids": batch["preferred_input_ids"],
            "attention_mask": batch["preferred_attention_mask"],
            "labels": batch["preferred_labels"]}
