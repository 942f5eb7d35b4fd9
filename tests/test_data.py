import io

import pandas as pd

from relapse.data.prepare import build_splits, prepare
from relapse.data.synthetic import ATTRIBUTES, make_people


def test_people_are_deterministic_in_seed():
    assert make_people(30, 7) == make_people(30, 7)
    assert make_people(30, 7) != make_people(30, 8)


def test_names_are_unique():
    people = make_people(300, 0)
    assert len({p.name for p in people}) == 300


def test_splits_are_deterministic_and_roles_disjoint():
    a, roles = build_splits({"people": 100, "seed": 3, "forget": 0.1, "holdout": 0.1})
    b, _ = build_splits({"people": 100, "seed": 3, "forget": 0.1, "holdout": 0.1})
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    sets = {role: set(ids) for role, ids in roles.items()}
    assert sum(len(s) for s in sets.values()) == 100
    for r1 in sets:
        for r2 in sets:
            if r1 < r2:
                assert not sets[r1] & sets[r2], (r1, r2)
    assert len(sets["forget"]) == 10 and len(sets["holdout"]) == 10


def test_every_split_draws_only_from_its_role():
    splits, roles = build_splits({"people": 60, "seed": 1})
    assert set(splits["forget"].pid) == set(roles["forget"])
    assert set(splits["retain"].pid) == set(roles["retain"])
    assert set(splits["knowmem_forget_qa"].pid) == set(roles["forget"])
    assert set(splits["knowmem_retain_qa"].pid) == set(roles["retain_eval"])
    assert set(splits["knowmem_holdout_qa"].pid) == set(roles["holdout"])
    assert set(splits["privleak_holdout"].pid) == set(roles["holdout"])
    # few-shot examples come from regularizer people, never from the people being asked about
    retain_questions = set(splits["knowmem_retain_qa"].question) | set(splits["knowmem_forget_qa"].question)
    for split in ("forget", "retain", "holdout"):
        assert not set(splits[f"knowmem_{split}_qa_icl"].question) & retain_questions


def test_qa_covers_every_attribute_and_answers_are_facts():
    splits, _ = build_splits({"people": 30, "seed": 0})
    qa = splits["knowmem_forget_qa"]
    assert set(qa.attribute) == set(ATTRIBUTES)
    people = splits["people"].set_index("pid")
    for row in qa.itertuples():
        assert str(people.loc[row.pid, row.attribute]) == row.answer
        assert people.loc[row.pid, "name"] in row.question


def test_verbmem_prompt_and_gt_rebuild_the_biography():
    splits, _ = build_splits({"people": 30, "seed": 0})
    people = splits["people"].set_index("pid")
    for row in splits["verbmem_forget"].itertuples():
        assert row.prompt + row.gt == people.loc[row.pid, "biography"]
        assert row.prompt.endswith(" ")
        assert all(f in row.gt for f in row.facts)


def test_prepare_writes_parquet_and_manifest(tmp_path):
    out = tmp_path / "data"
    prepare("b", {"kind": "synthetic", "people": 20, "seed": 0}, out)
    assert (out / "manifest.json").exists()
    assert len(pd.read_parquet(out / "knowmem_forget_qa.parquet")) == 2 * len(ATTRIBUTES)
    assert not list(tmp_path.glob(".data.tmp-*")), "temporary folder left behind"


# The relearning attack's data (relapse.data.relearn_split): recovery measured on held-out facts.

def _prepared(tmp_path, corpus, **kw):
    import json

    out = tmp_path / "data"
    prepare("b", {"kind": "synthetic", "seed": 0, **corpus}, out, **kw)
    return out, json.loads((out / "manifest.json").read_text())


def test_relearning_data_and_heldout_questions_share_no_person(tmp_path):
    """On the default corpus (100 people, 10 forget) the attacker's forget texts name none of the
    held-out people and contain none of their questions; before the split, its 16 texts held 42
    of the 60 KnowMem_f questions verbatim and named 9 of the 10 forget people."""
    from relapse.attacks.kinds.relearn import attack_texts

    out, manifest = _prepared(tmp_path, {"people": 100, "forget": 0.1, "holdout": 0.1})
    people = pd.read_parquet(out / "people.parquet").set_index("pid")
    forget_qa = pd.read_parquet(out / "knowmem_forget_qa.parquet")
    held = pd.read_parquet(out / "knowmem_forget_heldout_qa.parquet")
    relearn = pd.read_parquet(out / "relearn_forget.parquet")
    assert manifest["relearn"]["recovery"] == "held-out"
    assert not set(relearn.pid) & set(held.pid)
    assert set(relearn.pid) | set(held.pid) == set(people[people.role == "forget"].index)
    # the held-out questions are rows of knowmem_forget_qa, as they are
    assert held.merge(forget_qa).shape == held.shape
    texts = attack_texts(out, "forget", 16, 0)
    for name in people.loc[sorted(set(held.pid)), "name"]:
        assert not any(name in t for t in texts), name
    assert not any(f"Question: {q}\n" in t for q in held.question for t in texts)


def test_relearn_holdout_control_has_the_form_of_the_forget_documents(tmp_path):
    """The control is biography + QA block of never-trained people, like the forget documents
    (the holdout split itself stays biographies, for perplexity and PrivLeak)."""
    from relapse.attacks.kinds.relearn import attack_texts
    from relapse.data.synthetic import qa_text

    out, _ = _prepared(tmp_path, {"people": 30, "forget": 0.2, "holdout": 0.2})
    people = {p.pid: p for p in make_people(30, 0)}
    roles = pd.read_parquet(out / "people.parquet").set_index("pid").role
    control = pd.read_parquet(out / "relearn_holdout.parquet")
    forget = pd.read_parquet(out / "forget.parquet")
    assert list(control.columns) == list(forget.columns)
    assert set(control.pid) == set(roles[roles == "holdout"].index)
    for pid, rows in control.groupby("pid"):
        p = people[pid]
        assert dict(zip(rows.kind, rows.text)) == {
            "bio": p.biography(), "qa": qa_text([(q, a) for _, q, a in p.qa_pairs()])}
    texts = attack_texts(out, "holdout", 100, 0)
    assert sum(t.startswith("Question: ") for t in texts) == len(texts) // 2 == 6
    assert list(pd.read_parquet(out / "holdout.parquet").columns) == ["pid", "text"]


def test_relearning_split_sizes_match_a_count_by_hand(tmp_path):
    """20 people, forget 0.2: 4 forget people, 6 questions and 2 documents each; holdout 0.1: 2
    people. round(4 x share) are held out, at least one on each side."""
    corpus = {"people": 20, "forget": 0.2, "holdout": 0.1}
    for share, held_people in ((0.5, 2), (0.25, 1), (0.9, 3), (0.1, 1)):
        out, manifest = _prepared(tmp_path / str(share), corpus, heldout=share)
        sizes = manifest["splits"]
        assert sizes["knowmem_forget_heldout_qa"] == 6 * held_people, share
        assert sizes["relearn_forget"] == 2 * (4 - held_people), share
        assert sizes["relearn_holdout"] == 2 * 2
        assert len(manifest["relearn"]["heldout_sources"]) == held_people
    # nothing held out: MUSE's in-sample protocol, and the rows will say so
    out, manifest = _prepared(tmp_path / "zero", corpus, heldout=0)
    assert manifest["relearn"]["recovery"] == "in-sample"
    assert not (out / "knowmem_forget_heldout_qa.parquet").exists()
    assert pd.read_parquet(out / "relearn_forget.parquet").equals(
        pd.read_parquet(out / "forget.parquet"))
    _, manifest = _prepared(tmp_path / "one", {"people": 12})     # a single forget person
    assert manifest["relearn"]["recovery"] == "in-sample"
    assert "single forget person" in manifest["relearn"]["reason"]


def test_the_relearning_split_leaves_every_other_split_as_it_was(tmp_path):
    """Unlearning and its numbers read the same data as before the split existed."""
    corpus = {"people": 100, "forget": 0.1, "holdout": 0.1, "seed": 0}
    before, _ = build_splits(corpus)
    out, _ = _prepared(tmp_path, corpus)
    for name, frame in before.items():
        expected = pd.read_parquet(io.BytesIO(frame.to_parquet(index=False)))
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"), expected)
