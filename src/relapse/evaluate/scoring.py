"""Batched teacher-forced scoring: one forward pass per text gives everything the likelihood
metrics need (PrivLeak and the MIA family, perplexity).

A text is tokenized with the tokenizer's special tokens (BOS first), and its scored tokens are
every token after the first: the first token has nothing before it to be predicted from, so BOS
is context only, never scored. For scored token x_t the engine returns

    logprobs[t] = log p(x_t | x_<t)
    mu[t]       = Σ_v p_v log p_v                        (p = p(· | x_<t) over the vocabulary)
    sigma[t]    = sqrt(Σ_v p_v (log p_v)² - mu[t]²)

sigma is computed as sqrt(Σ_v p_v (log p_v - mu[t])²), the same quantity without the
cancellation of the raw second moment.

Texts are sorted by length (longest first, so that an out-of-memory batch shows up at once) and
cut into batches of `batch_size`; rows are right-padded, and since attention is causal a real
token never sees the padding after it, so each text's numbers equal those of the text alone
(tested to 1e-5). Logits are upcast to float32 before the log-softmax, so a bf16 model on CUDA
scores as precisely as its logits allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class TextScores:
    """Per-token numbers of one text (float64 arrays of length n_tokens)."""
    logprobs: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.logprobs.size)

    @property
    def nll_sum(self) -> float:
        return float(-self.logprobs.sum())


def _position_stats(logits, targets):
    """(log p of each target, mu, sigma) for logits [n, V] predicting targets [n]."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    # Where p underflows to 0 (or a logit is -inf), p·log p is 0, not 0·(-inf) = NaN.
    live = p > 0
    mu = torch.where(live, p * logp, 0.0).sum(-1)
    var = torch.where(live, p * (logp - mu.unsqueeze(-1)) ** 2, 0.0).sum(-1)
    return picked, mu, var.clamp(min=0).sqrt()


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 16,
                max_tokens: int | None = None, progress: bool | None = None) -> list[TextScores]:
    """TextScores for every text, in input order, from one forward pass per text.
    `max_tokens` keeps the first tokens of longer texts (BOS included). `progress=False` turns
    the bar off; otherwise it shows only on a terminal outside CI."""
    import torch

    from relapse.models.batching import pad_rows
    from relapse.progress import progress as bar

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    if max_tokens:
        encoded = [e[:max_tokens] for e in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]), reverse=True)
    out: list[TextScores | None] = [None] * len(texts)
    batches = range(0, len(order), batch_size)
    for start in (bar(batches, desc="scoring", unit="batch", leave=False)
                  if progress is not False else batches):
        idx = order[start:start + batch_size]
        ids, mask = pad_rows([encoded[i] for i in idx], pad)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(idx):
                n = len(encoded[i])
                # Position t predicts token t+1: logits 0..n-2 score tokens 1..n-1.
                stats = _position_stats(logits[row, :n - 1], ids[row, 1:n].to(device))
                out[i] = TextScores(*(s.double().cpu().numpy() for s in stats))
    return out  # type: ignore[return-value]
