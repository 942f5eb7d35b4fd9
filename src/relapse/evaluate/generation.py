"""Batched greedy generation with left padding and the KV cache."""

from __future__ import annotations

from typing import Sequence


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The prefix of `text` before the first occurrence of any stop string (MUSE applies them in
    turn, which is the same thing)."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int = 32, max_prompt_tokens: int | None = None,
                    stop_strings: Sequence[str] = ()) -> list[str]:
    """Greedy continuations of `prompts` (decoded without the prompt), in input order.
    Prompts are sorted by length so that each batch pads little. With `stop_strings`, a batch
    stops once every row has produced one; greedy tokens before a stop do not depend on what
    follows, so after `cut_at_stops` the result is the same as generating to the limit."""
    import torch

    device = next(model.parameters()).device
    from relapse.models.batching import prompt_ids

    # A trailing space that the tokenizer would split off is left to the model (prompt_ids).
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if max_prompt_tokens:
        encoded = [e[-max_prompt_tokens:] for e in encoded]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                 use_cache=True, stop_strings=list(stop_strings) or None,
                                 tokenizer=tokenizer if stop_strings else None)
        new = gen[:, width:].cpu()
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(new[row], skip_special_tokens=True)
    return out
