"""Tokenize text lists into padded batches, and teacher-forced answer checks. `pad_rows` is the
package's one padder: encode here, scoring (relapse.evaluate.scoring) and greedy generation
(generation.py) all build their batches with it."""

from __future__ import annotations

from typing import NamedTuple, Sequence


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """(input_ids, attention_mask), long tensors [len(rows), longest row]: each row's tokens at
    the start (`side="right"`: padding after them) or at the end (`"left"`: padding before
    them, as generation needs), `pad_id` elsewhere, the mask 1 on real tokens."""
    import torch

    if side not in ("right", "left"):
        raise ValueError(f"side must be right or left, got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def encode(tokenizer, texts: Sequence[str], max_length: int | None = None, eos: bool = False,
           prompts: Sequence[str] | None = None):
    """Right-padded input_ids, attention_mask and labels (-100 on padding). BOS is prepended by
    the tokenizer; `eos` appends EOS so that a document's end is learned.

    `prompts` (QA texts: each text is its prompt + answer, relapse.data.prompts) leaves the
    prompt's tokens unlabelled, so that a loss covers the answer (and EOS) only, as TOFU's
    training does. The prompt's tokens are those the text's tokens share with the prompt
    tokenized alone (BOS included): a token that spans the prompt's end and the answer's start
    belongs to the answer."""
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    if eos:
        rows = [r + [tokenizer.eos_token_id] for r in rows]
    if max_length is not None:
        rows = [r[:max_length] for r in rows]
    masked = None
    if prompts is not None:
        if len(prompts) != len(texts):
            raise ValueError(f"encode: {len(prompts)} prompts for {len(texts)} texts")
        masked = [prompt_length(tokenizer, p, r) for p, r in zip(prompts, rows)]
    return batch_rows(rows, tokenizer.pad_token_id, masked)


def prompt_length(tokenizer, prompt: str, row: Sequence[int]) -> int:
    """How many leading tokens of `row` (the prompt + answer text, tokenized) are the prompt's:
    those it shares with the prompt tokenized alone (BOS included)."""
    return _shared_prefix(tokenizer(prompt, add_special_tokens=True)["input_ids"], row)


def batch_rows(rows: Sequence[Sequence[int]], pad_id: int,
               masked: Sequence[int] | None = None):
    """Right-padded input_ids, attention_mask and labels (-100 on padding, and on the first
    `masked[i]` tokens of row i: a QA prompt the loss does not cover) of token-id rows."""
    ids, mask = pad_rows(rows, pad_id)
    labels = ids.masked_fill(mask == 0, -100)
    for i, n in enumerate(masked or ()):
        labels[i, :n] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class TrainingRow(NamedTuple):
    """One training sample: its token ids, and how many leading ones the loss skips (a QA
    text's prompt; 0 for raw text and packed windows)."""
    ids: list[int]
    masked: int = 0


def training_rows(tokenizer, frame, eos: bool = True) -> list[TrainingRow]:
    """The token ids that train on a split's rows. A split with an `input_ids` column (MUSE's
    packed windows, relapse.data.corpora.chunking) is used verbatim: those ids are the model
    input, BOS included, and their text would not tokenize back to them. Otherwise each `text`
    is tokenized with the tokenizer's special tokens, and EOS appended (`eos`) so that a
    document's end is learned; a split with a `prompt` column (QA texts in the bench's template,
    relapse.data.prompts) trains on the answer and EOS only, as TOFU does."""
    if "input_ids" not in frame.columns:
        rows = [tokenizer(str(t), add_special_tokens=True)["input_ids"] for t in frame.text]
        rows = [r + [tokenizer.eos_token_id] for r in rows] if eos else rows
        prompts = frame.prompt if "prompt" in frame.columns else [None] * len(rows)
        return [TrainingRow(r, prompt_length(tokenizer, str(p), r) if p is not None else 0)
                for r, p in zip(rows, prompts)]
    rows = [[int(i) for i in r] for r in frame.input_ids]
    vocab = len(tokenizer)
    top = max((max(r) for r in rows if len(r)), default=-1)
    if top >= vocab:
        raise ValueError(f"a split's stored token id {top} is outside the tokenizer's vocabulary "
                         f"({vocab}): the split was prepared with another tokenizer; rerun the "
                         "data stage with this model's")
    return [TrainingRow(r) for r in rows]


def batch_training_rows(rows: Sequence[TrainingRow], pad_id: int):
    return batch_rows([r.ids for r in rows], pad_id, [r.masked for r in rows])


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt that a continuation will follow.

    MUSE's prompts end in a space ("...\nAnswer: ", a VerbMem prefix cut after a word). The
    tokenizer trained here keeps that space inside the prompt's last pre-token, so the prompt
    tokenizes as a prefix of prompt + continuation, and it is used as it is. A GPT-2-style BPE
    (SmolLM2's) splits a trailing space off as a lone token that never precedes a word in its
    training text ("Answer: Paris" is "Answer", ":", " Paris"); there the space is dropped, and
    the model writes it with the next word (outputs are compared after stripping)."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if prompt.endswith(" ") and not prompt.endswith("  "):
        trimmed = tokenizer(prompt[:-1], add_special_tokens=True)["input_ids"]
        if len(trimmed) == len(ids) - 1 and ids[:-1] == trimmed:
            return trimmed
    return ids


def answers_correct(model, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                    batch_size: int = 64) -> list[bool]:
    """Whether greedy decoding would produce each answer followed by a newline, checked in one
    teacher-forced forward pass per batch (argmax at every answer position)."""
    import torch

    out: list[bool] = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        p = list(prompts[start:start + batch_size])
        a = list(answers[start:start + batch_size])
        full = encode(tokenizer, [pi + ai + "\n" for pi, ai in zip(p, a)])
        prompt_lens = [len(prompt_ids(tokenizer, pi)) for pi in p]
        with torch.no_grad():
            logits = model(input_ids=full["input_ids"].to(device),
                           attention_mask=full["attention_mask"].to(device)).logits
        pred = logits.argmax(-1).cpu()
        for i, plen in enumerate(prompt_lens):
            end = int(full["attention_mask"][i].sum())
            target = full["input_ids"][i, plen:end]
            guess = pred[i, plen - 1:end - 1]
            out.append(bool(torch.equal(target, guess)))
    return out


def pack(tokenizer, texts: Sequence[str], eos: bool = True):
    """Pack texts into as few rows as possible, each text attending only to itself.

    Rows are as wide as the longest text; texts are placed first-fit by decreasing length. A 4D
    block-diagonal causal mask and per-text position ids make every text's logits equal to those
    of the text alone (tested), and the first token of each text is unlabelled, as it is unpadded;
    so the mean loss equals the padded batch's, on a fraction of the tokens (random batches of
    biographies and QA blocks were 60% padding)."""
    import torch

    rows_ids = [tokenizer(t, add_special_tokens=True)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
                for t in texts]
    width = max(len(r) for r in rows_ids)
    bins: list[list[list[int]]] = []
    space: list[int] = []
    for r in sorted(rows_ids, key=len, reverse=True):
        for b, free in enumerate(space):
            if len(r) <= free:
                bins[b].append(r)
                space[b] -= len(r)
                break
        else:
            bins.append([r])
            space.append(width - len(r))
    n = len(bins)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    for b, docs in enumerate(bins):
        at = 0
        for s, doc in enumerate(docs):
            span = slice(at, at + len(doc))
            ids[b, span] = torch.tensor(doc)
            labels[b, at + 1:at + len(doc)] = torch.tensor(doc[1:])
            positions[b, span] = torch.arange(len(doc))
            segment[b, span] = s
            at += len(doc)
        segment[b, at:] = torch.arange(len(docs), len(docs) + width - at)  # pads: alone
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = causal & (segment[:, :, None] == segment[:, None, :])
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": positions,
            "labels": labels}
