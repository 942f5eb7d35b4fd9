import pytest
from rouge_score import rouge_scorer

from relapse.models.generation import cut_at_stops
from relapse.evaluate.rouge import rouge_l


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@pytest.mark.parametrize("ref,pred,f1", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("the cat sat on the mat", "a dog", 0.0),
    ("Veloria", "veloria", 1.0),                               # lowercased by rouge-score
    ("weather forecaster", "a weather forecaster", 0.8),       # P=2/3, R=1
    ("born in 1934 in Orindale", "born in Orindale", 2 * 0.6 * 1 / 1.6),
])
def test_known_values(ref, pred, f1):
    assert rouge_l(ref, pred)[0] == pytest.approx(f1)


def test_matches_hand_lcs_on_word_strings():
    pairs = [("a b c d", "a c d"), ("x y z", "z y x"), ("one two three four", "two four six")]
    for ref, pred in pairs:
        lcs = _lcs(ref.split(), pred.split())
        p, r = lcs / len(pred.split()), lcs / len(ref.split())
        assert rouge_l(ref, pred)[0] == pytest.approx(2 * p * r / (p + r))


def test_no_stemming_like_muse():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert scorer.score("running", "runs")["rougeL"].fmeasure == 1.0
    assert rouge_l("running", "runs")[0] == 0.0


def test_stops_cut_at_first():
    assert cut_at_stops("Veloria\n\nQuestion: x", ["\n\n", "\nQuestion", "Question:"]) == "Veloria"
    assert cut_at_stops("1934\nQuestion: x", ["\n\n", "\nQuestion", "Question:"]) == "1934"
    assert cut_at_stops("harp Question: x", ["\n\n", "\nQuestion", "Question:"]) == "harp "
