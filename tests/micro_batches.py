"""Consecutive slices of texts encoded as micro-batches, the way the unlearning loop feeds a
batch split for gradient accumulation (tests of exact accumulation share it)."""


def micro_batches(tok, texts, sizes, extend=None):
    """One encoded batch per size, over texts[0:s1], texts[s1:s1+s2], ...; `extend(batch)` adds
    what a method needs beside the tokens (a reference log-probability, say)."""
    from relapse.models.batching import encode

    out, start = [], 0
    for size in sizes:
        batch = encode(tok, texts[start:start + size], eos=True)
        if extend is not None:
            extend(batch)
        out.append(batch)
        start += size
    return out
