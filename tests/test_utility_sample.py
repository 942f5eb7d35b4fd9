"""utility.max_items: a fixed uniform sample of each perplexity split (the same texts in every
cell), whose rows say how many texts were scored out of how many."""

from types import SimpleNamespace

import math

import pandas as pd
import pytest

from relapse.evaluate.metrics.utility import SPLITS, utility


class FakeContext:
    """Splits of `size` texts; text i scores NLL_i = i + 1 over 2 + i % 3 tokens."""

    def __init__(self, size, max_items):
        self.size, self.cfg = size, {"utility": {"max_items": max_items}}

    def split(self, name, max_items=None):
        assert max_items is None
        return pd.DataFrame({"text": [f"{name} {i}" for i in range(self.size)],
                             "pid": range(self.size)})

    def scores(self, texts):
        out = []
        for text in texts:
            i = int(text.rsplit(" ", 1)[1])
            out.append(SimpleNamespace(nll_sum=float(i + 1), n_tokens=2 + i % 3))
        return out


def test_the_cap_scores_a_fixed_uniform_sample_and_rows_record_it():
    results = utility(FakeContext(60, 12))
    assert [r.split for r in results] == list(SPLITS)
    for result in results:
        items = [s["item"] for s in result.samples]
        assert len(items) == 12 == len(set(items)) and items == sorted(items)
        assert set(items) <= set(range(60))
        # a sample of the split, not its first rows (which may be ordered, e.g. by date)
        assert items != list(range(12))
        assert result.columns == {"split_items": 60}
        # the perplexity of exactly the sampled texts: exp(Σ NLL_i / Σ n_i)
        expected = math.exp(sum(i + 1 for i in items) / sum(2 + i % 3 for i in items))
        assert result.estimate(samples=10)[0] == pytest.approx(expected, rel=1e-12)
    # the same texts in every cell (and for both splits: the draw depends on the size only)
    again = utility(FakeContext(60, 12))
    assert [s["item"] for s in again[0].samples] == [s["item"] for s in results[0].samples]


def test_no_cap_or_a_cap_above_the_split_scores_every_text():
    for cap in (None, 60, 100):
        result = utility(FakeContext(60, cap))[0]
        assert [s["item"] for s in result.samples] == list(range(60))
        assert result.columns == {"split_items": 60}


def test_a_zero_cap_is_an_error_not_every_text():
    with pytest.raises(ValueError, match="utility.max_items is 0"):
        utility(FakeContext(60, 0))
