"""Cut long texts into training chunks of at most `max_length` tokens, as MUSE's training code
does (a book of Books is one row of raw/forget, far longer than any context window).

A chunk is an exact substring of the text, cut at token boundaries found through the tokenizer's
offset mapping (decoding token ids back would not give the original bytes for every tokenizer).
`max_length` counts the special tokens the tokenizer adds (BOS), so a chunk tokenized for
training is at most `max_length` long.
"""

from __future__ import annotations


def special_count(tokenizer) -> int:
    """Tokens the tokenizer adds around a text (1 for a BOS-prepending Llama tokenizer)."""
    return len(tokenizer("a", add_special_tokens=True)["input_ids"]) - \
        len(tokenizer("a", add_special_tokens=False)["input_ids"])


def chunk_text(text: str, tokenizer, max_length: int) -> list[str]:
    per_chunk = max_length - special_count(tokenizer)
    if per_chunk < 1:
        raise ValueError(f"corpus.max_length: {max_length} leaves no room for text after the "
                         "tokenizer's special tokens")
    offsets = tokenizer(text, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= per_chunk:
        return [text] if text else []
    starts = [offsets[i][0] for i in range(0, len(offsets), per_chunk)]
    # Each chunk runs to the next chunk's first token, so whitespace between tokens is kept and
    # the chunks concatenate back to the text.
    bounds = [0, *starts[1:], len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if text[a:b]]


def chunk_frame(frame, tokenizer, max_length: int):
    """One row per chunk: `text` the chunk, `doc` the source row, `chunk` its index there,
    `pid` a running id (the contract's per-item key)."""
    import pandas as pd

    rows = []
    for doc, text in zip(frame.index, frame.text):
        for i, chunk in enumerate(chunk_text(str(text), tokenizer, max_length)):
            rows.append({"pid": len(rows), "doc": int(doc), "chunk": i, "text": chunk})
    return pd.DataFrame(rows, columns=["pid", "doc", "chunk", "text"])
