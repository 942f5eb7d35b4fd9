"""Per-token and per-sequence quantities the objectives are built from.

Conventions: `logits` are [batch, time, vocab] from a forward on `input_ids`; `labels` are
input_ids with -100 on padding. Position t predicts token t+1, so both are shifted here once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _shift(logits: torch.Tensor, labels: torch.Tensor):
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    return logits, labels, labels != -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor):
    """log p(token_{t+1} | prefix) at every labelled position, and the mask of those positions."""
    logits, labels, mask = _shift(logits, labels)
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every labelled token of the batch."""
    logits, labels, _ = _shift(logits, labels)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=-100)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y|x) per sequence: the sum of its token log-probabilities. Shape [batch]."""
    picked, _ = token_logprobs(logits, labels)
    return picked.sum(-1)


def kl_ref_to_model(ref_logits: torch.Tensor, logits: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) over the vocabulary, averaged over labelled positions."""
    ref_logits, _, mask = _shift(ref_logits, labels)
    logits = logits[:, :-1, :]
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def reduction_count(batch: dict, reduction: str) -> int:
    """How many units a loss with this `reduction` averages over in `batch` (registry.py):
    scored next-token positions, attended positions, or sequences."""
    if reduction == "token":
        return int((batch["labels"][:, 1:] != -100).sum())
    if reduction == "position":
        return int(batch["attention_mask"].sum())
    if reduction == "sequence":
        return int(batch["input_ids"].shape[0])
    raise ValueError(f"reduction {reduction!r} is not token, position or sequence")
