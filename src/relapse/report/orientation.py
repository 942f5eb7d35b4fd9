"""Which way each metric points: every metric of a run turned into one "knowledge" scale on which
HIGHER means the model holds MORE of the forget set's content (or of the retain set's, for the
utility rows), the orientation open-unlearning's meta-evaluation (arXiv 2506.12618) assumes when
it divides a metric before an attack by the metric after it.

knowledge = offset + sign * value, per (metric, split) of metrics.parquet:
- KnowMem, VerbMem (ROUGE-L F1 x100), facts recalled, QA exact match, TOFU probability and
  ROUGE, TOFU truth ratio off the forget split: as they are (higher = more knowledge);
- MIA AUCs (forget_vs_holdout): 1 - AUC. relapse's scores are losses (relapse.evaluate.mia), so
  its AUC is about 0 for a model that memorised the forget texts and about 0.5 for one that never
  saw them; 1 - AUC is the AUC with the membership score turned the other way round (higher:
  forget texts look more like members), 0.5 for a model that never saw them;
- PrivLeak (MUSE, %): -PrivLeak / 100 = 1 - AUC / AUC_retrain: 0 at the retrain's AUC, 1 for a
  model that memorised everything, negative for over-unlearning (forget texts less familiar than
  to the retrain);
- TOFU truth ratio on forget (mean min(R, 1/R): about 1 when the answer and its perturbations are
  equally likely, i.e. unknown): 1 - value.
Metrics without a knowledge reading (perplexity, TOFU forget quality and model utility) have no
orientation and are left out of the meta-evaluation.
"""

from __future__ import annotations

# (metric, split) -> (offset, sign); a metric name ending in "*" matches by prefix
ORIENT: dict[tuple[str, str], tuple[float, float]] = {
    ("knowmem", "forget"): (0.0, 1.0),
    ("knowmem", "forget_heldout"): (0.0, 1.0),
    ("knowmem", "retain"): (0.0, 1.0),
    ("verbmem", "forget"): (0.0, 1.0),
    ("verbmem_facts", "forget"): (0.0, 1.0),
    ("qa_em", "forget"): (0.0, 1.0),
    ("qa_em", "forget_heldout"): (0.0, 1.0),
    ("qa_em", "retain"): (0.0, 1.0),
    ("mia_*", "forget_vs_holdout"): (1.0, -1.0),
    ("privleak", "forget"): (0.0, -0.01),
    ("privleak_matched", "forget"): (0.0, -0.01),
    ("tofu_prob", "forget"): (0.0, 1.0),
    ("tofu_prob", "retain"): (0.0, 1.0),
    ("tofu_rouge", "forget"): (0.0, 1.0),
    ("tofu_rouge", "retain"): (0.0, 1.0),
    ("tofu_truth_ratio", "forget"): (1.0, -1.0),
    ("tofu_truth_ratio", "retain"): (0.0, 1.0),
}


def orientation(metric: str, split: str) -> tuple[float, float] | None:
    """(offset, sign) of (metric, split), or None when it has no knowledge reading."""
    if (metric, split) in ORIENT:
        return ORIENT[(metric, split)]
    for (name, where), value in ORIENT.items():
        if name.endswith("*") and metric.startswith(name[:-1]) and split == where:
            return value
    return None


def describe(metric: str, split: str) -> str:
    """How the knowledge scale is read from the metric, for the tables' `orientation` column."""
    o = orientation(metric, split)
    if o is None:
        return "none"
    offset, sign = o
    if offset == 0 and sign == 1:
        return "as is"
    if sign == -0.01:
        return "-value/100"
    return f"{offset:g} - value" if sign == -1 else f"{offset:g} + {sign:g} * value"
