"""The relearning attack's data, split so that recovery is measured on facts it never saw.

Relearning on forget texts and scoring KnowMem_f on the same facts measures how fast the model
re-learns the test items, not whether knowledge was hidden (DESIGN §13; arXiv 2506.00688). Where a
corpus maps each forget QA pair to its source (synthbio: the person; TOFU: the author, 20 pairs per
author in row order), the forget *sources* are split in two, disjoint:

  relearn_forget               forget texts of the relearning part: all the attacker trains on
  knowmem_forget_heldout_qa    KnowMem QA of the other part (rows of knowmem_forget_qa, same pid)

`heldout` (config attacks.relearn.heldout) is the share of forget sources held out: round(n ×
heldout), at least one on each side; the choice is a seeded shuffle. The KnowMem metric scores the
held-out rows as split `forget_heldout` beside the whole `forget` split (the in-sample number).
`relearn_holdout` is the relearning control: texts of never-trained people of the same form as
relearn_forget (on synthbio, biography plus QA block; the `holdout` split stays biographies, for
perplexity and PrivLeak).

A corpus whose QA pairs carry no source (MUSE), `heldout: 0`, or a single forget source keeps the
in-sample protocol: relearn_forget is the whole forget split, no held-out split is written, and the
record says `recovery: in-sample` with the reason; the relearning attack copies it onto its rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:     # the attack registry imports DEFAULT_HELDOUT where the Snakefile loads
    import pandas as pd

DEFAULT_HELDOUT = 0.5
HELD_OUT, IN_SAMPLE = "held-out", "in-sample"


def split_sources(sources: list[int], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(relearning sources, held-out sources), disjoint, each sorted. round(n × heldout) are held
    out, clamped to leave at least one on each side; none when heldout is 0 or n < 2."""
    if not 0 <= heldout < 1:
        raise ValueError(f"attacks.relearn.heldout: {heldout!r} is not allowed; allowed: a "
                         "fraction of the forget people, 0 <= heldout < 1 (0: in-sample)")
    order = sorted(set(sources))
    n_held = 0 if heldout == 0 or len(order) < 2 else \
        min(max(1, round(len(order) * heldout)), len(order) - 1)
    random.Random(seed).shuffle(order)
    return sorted(order[n_held:]), sorted(order[:n_held])


def relearn_splits(splits: dict[str, pd.DataFrame], heldout: float, seed: int,
                   source_of: Callable[[int], int] | None, unit: str = "person",
                   holdout_texts: pd.DataFrame | None = None,
                   why_in_sample: str = "") -> tuple[dict[str, pd.DataFrame], dict]:
    """The relearning splits and the manifest's record, from the contract's `forget`,
    `knowmem_forget_qa` and `holdout` splits. `source_of` maps a row's pid (in both forget and
    knowmem_forget_qa) to its source; None: the corpus has no such map (`why_in_sample` says
    why). `holdout_texts`: the control's texts when `holdout` has another form than forget."""
    forget, qa = splits["forget"], splits["knowmem_forget_qa"]
    control = splits["holdout"] if holdout_texts is None else holdout_texts
    out = {"relearn_holdout": control.reset_index(drop=True)}
    relearn, held = [], []
    if source_of is not None:
        relearn, held = split_sources([source_of(int(p)) for p in qa.pid], heldout, seed)
    if not held:
        reason = why_in_sample if source_of is None else (
            "attacks.relearn.heldout is 0" if heldout == 0
            else f"a single forget {unit}: nothing to hold out")
        out["relearn_forget"] = forget.reset_index(drop=True)
        return out, {"recovery": IN_SAMPLE, "reason": reason, "heldout": heldout}

    def of(frame, wanted):
        return frame[frame.pid.map(lambda p: source_of(int(p))).isin(wanted)] \
            .reset_index(drop=True)

    out["relearn_forget"] = of(forget, relearn)
    out["knowmem_forget_heldout_qa"] = of(qa, held)
    return out, {"recovery": HELD_OUT, "heldout": heldout, "unit": unit,
                 "relearn_sources": relearn, "heldout_sources": held}
