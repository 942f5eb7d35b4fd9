"""Turn MUSE's raw texts (raw/forget, raw/retain1) into training samples, two ways
(`corpus.packing`):

stream (default; MUSE's own `DefaultDataset` reading `data/{corpus}/raw/{split}.txt`)
    MUSE's `load_data.py` writes each raw split as its texts joined by a blank line ("\\n\\n").
    Its training code tokenizes that whole stream without special tokens and cuts it into
    consecutive windows of `max_length - 1` tokens, each led by BOS, so a window is
    `max_length` tokens and may span several articles. The last window, when short, is filled
    up to `max_length` with the start of the first window (its BOS included), so the stream's
    first tokens are seen twice per epoch. An epoch is therefore ceil(tokens / (max_length - 1))
    samples: about 400 on MUSE-News (0.82M tokens at 2048), where one sample per article would
    be 889, and MUSE's epoch counts assume the windows.
article
    One sample per article (a book of Books is one row, far longer than any context window, so
    an article longer than `max_length` is cut at token boundaries into several samples).

Why a packed window is stored as token ids (the `input_ids` column), and its `text` is only
for reading: a window starts and ends wherever the token count falls, often inside a word.
Tokenized again on its own, its text does not give the same ids for every tokenizer: Llama-2's
(MUSE's targets) adds a "▁" word-start prefix to the first piece, so a window starting with a
word's continuation ("ing") would train on "▁ing", and a byte-level BPE may merge a cut word's
pieces differently. The training-data path (relapse.models.batching.training_rows) feeds
`input_ids` verbatim, with no BOS or EOS added: they are exactly MUSE's tensors. `text` is the
exact substring of the stream that the window's tokens cover (through the tokenizer's offset
mapping), and the filled-up last window's text is its own followed by the first window's
(the BOS between them has no text); the analyses that read texts (representations, update
survival, calibration) use it.

An article sample is an exact substring of its article, cut at token boundaries, with no ids:
it is tokenized at training time with the tokenizer's special tokens (and EOS after it), as the
other corpora are. `max_length` counts the special tokens, so such a sample tokenized for
training is at most `max_length` long before its EOS.

BOS in both modes is what the tokenizer itself puts before a text (`special_prefix`): BOS for
Llama-2, as MUSE's `add_bos_token=True`; nothing for a tokenizer that adds none, whose windows
are then `max_length` tokens of text, as MUSE's `add_bos_token=False` branch cuts them.
"""

from __future__ import annotations

from bisect import bisect_right

JOINER = "\n\n"  # how MUSE's load_data.py joins a raw split's texts into its .txt file
PACKINGS = ("stream", "article")


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text ([BOS] for Llama-2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            return list(with_special[:k])
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: its special tokens "
                     "change the text's own tokens; cannot tell what it puts before a text")


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
    """Packing `article`: one row per chunk: `text` the chunk, `doc` the source row, `chunk` its
    index there, `pid` a running id (the contract's per-item key)."""
    import pandas as pd

    rows = []
    for doc, text in zip(frame.index, frame.text):
        for i, chunk in enumerate(chunk_text(str(text), tokenizer, max_length)):
            rows.append({"pid": len(rows), "doc": int(doc), "chunk": i, "text": chunk})
    return pd.DataFrame(rows, columns=["pid", "doc", "chunk", "text"])


def pack_stream(texts, tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Packing `stream`: MUSE's windows of the joined texts (module docstring), and the number
    of text tokens in the stream. Each window: `input_ids` (the model input, BOS included),
    `text`, `doc` and `doc_last` (the articles of its first and last stream token), `wrapped`
    (tokens appended from the first window to fill the last one; 0 elsewhere)."""
    prefix = special_prefix(tokenizer)
    per = max_length - len(prefix)
    if per < 1:
        raise ValueError(f"corpus.max_length: {max_length} leaves no room for text after the "
                         "tokenizer's special tokens")
    texts = [str(t) for t in texts]
    stream = JOINER.join(texts)
    enc = tokenizer(stream, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    n = len(ids)
    if n == 0:
        return [], 0
    doc_starts, at = [], 0
    for t in texts:
        doc_starts.append(at)
        at += len(t) + len(JOINER)

    def doc_of(i: int) -> int:
        return bisect_right(doc_starts, offsets[i][0]) - 1

    def cut(i: int) -> int:
        """Where token i's text begins; the first window also keeps any leading whitespace that
        made no token, and the last runs to the stream's end."""
        return 0 if i == 0 else len(stream) if i >= n else offsets[i][0]

    windows = []
    for i in range(0, n, per):
        j = min(i + per, n)
        windows.append({"input_ids": prefix + ids[i:j], "text": stream[cut(i):cut(j)],
                        "doc": doc_of(i), "doc_last": doc_of(j - 1), "wrapped": 0})
    last, first = windows[-1], windows[0]["input_ids"]
    if len(last["input_ids"]) < max_length:
        fill = first[:max_length - len(last["input_ids"])]
        text_tokens = max(0, len(fill) - len(prefix))
        last["input_ids"] = last["input_ids"] + fill
        last["text"] += stream[:cut(text_tokens)] if text_tokens else ""
        last["wrapped"] = len(fill)
    return windows, n


def pack_frame(frame, tokenizer, max_length: int):
    """Packing `stream` as a split: one row per window, `pid` its index, and the stream's token
    count (for the manifest)."""
    import pandas as pd

    windows, tokens = pack_stream(frame.text, tokenizer, max_length)
    rows = [{"pid": k, **w} for k, w in enumerate(windows)]
    columns = ["pid", "doc", "doc_last", "wrapped", "text", "input_ids"]
    return pd.DataFrame(rows, columns=columns), tokens
