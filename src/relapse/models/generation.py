"""Batched greedy generation with left padding and the KV cache.

Two things keep it cheap on a CPU, without changing what greedy decoding produces:
- A prefix shared by every prompt of a batch (KnowMem's few-shot examples: about three quarters
  of each prompt) is forwarded once and its KV cache copied across the batch; only the rest of
  each prompt is prefilled per row.
- Stop strings are checked on the decoded tail of each row. transformers' `StopStringCriteria`
  precomputes tables over the whole vocabulary on every call (0.6 s for SmolLM2's 49k tokens,
  measured), more than a short generation's decoding.
"""

from __future__ import annotations

from typing import Sequence

# Below this many shared tokens a separate prefix forward costs more than it saves.
MIN_SHARED_PREFIX = 16


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The prefix of `text` before the first occurrence of any stop string (MUSE applies them in
    turn, which is the same thing)."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix common to every sequence, leaving at least one token
    of each sequence after it (generation needs a token to feed)."""
    shortest = min(len(s) for s in sequences)
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


class StopOnStrings:
    """A stopping criterion: a row is done once its generated text contains any stop string.
    Only the newest tokens are decoded each step (enough to cover the longest stop string), so
    the cost per step is a few short decodes per row."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.prompt_width = prompt_width
        self.tail = max(len(s) for s in self.stops) + 2  # a token holds at least one character
        self.done = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_width:]
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(new.shape[0]):
            if not self.done[row]:
                text = self.tokenizer.decode(new[row, -self.tail:], skip_special_tokens=True)
                self.done[row] = any(stop in text for stop in self.stops)
        return self.done.clone()


def _prefix_cache(model, prefix: list[int], rows: int, device):
    """The KV cache of `prefix`, repeated for `rows` rows."""
    import torch

    with torch.no_grad():
        cache = model(input_ids=torch.tensor([prefix], device=device),
                      use_cache=True).past_key_values
    cache.batch_repeat_interleave(rows)
    return cache


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int = 32, max_prompt_tokens: int | None = None,
                    stop_strings: Sequence[str] = (), share_prefix: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (decoded without the prompt), in input order.
    Prompts are sorted by length so that each batch pads little. With `stop_strings`, a batch
    stops once every row has produced one; greedy tokens before a stop do not depend on what
    follows, so after `cut_at_stops` the result is the same as generating to the limit.
    With `share_prefix`, a token prefix common to a whole batch is forwarded once (the
    continuation is the same; tests/test_evaluate.py compares both)."""
    import torch
    from transformers import StoppingCriteriaList

    from relapse.models.batching import pad_rows, prompt_ids

    device = next(model.parameters()).device
    # A trailing space that the tokenizer would split off is left to the model (prompt_ids).
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if max_prompt_tokens:
        encoded = [e[-max_prompt_tokens:] for e in encoded]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # A runtime that keeps its own KV cache (llama.cpp) shares prefixes itself.
        shared = (shared_prefix_length([encoded[i] for i in idx])
                  if share_prefix and getattr(model, "takes_past_key_values", True) else 0)
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        rest = [encoded[i][shared:] for i in idx]
        # The shared prefix, then each row's remainder left-padded: pads sit between the two,
        # masked out; position ids follow the mask, so every real token keeps its position.
        rest_ids, rest_mask = pad_rows(rest, pad, side="left")
        width = rest_ids.shape[1]
        prefix = torch.tensor(encoded[idx[0]][:shared], dtype=torch.long).expand(len(idx), shared)
        ids = torch.cat([prefix, rest_ids], dim=1)
        mask = torch.cat([torch.ones_like(prefix), rest_mask], dim=1)
        extra = {}
        if shared:
            extra["past_key_values"] = _prefix_cache(model, encoded[idx[0]][:shared], len(idx),
                                                     device)
        if stop_strings:
            extra["stopping_criteria"] = StoppingCriteriaList(
                [StopOnStrings(tokenizer, stop_strings, shared + width)])
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                 use_cache=True, **extra)
        new = gen[:, shared + width:].cpu()
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(new[row], skip_special_tokens=True)
    return out
