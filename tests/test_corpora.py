"""Corpus loaders (relapse.data.corpora) on local snapshots in the hub's exact layouts."""

import json

import pandas as pd
import pytest

from hub_snapshots import muse_bench_config, muse_snapshot, tofu_snapshot
from relapse.data.corpora import corpus_kinds, get_corpus
from relapse.data.corpora.chunking import chunk_text
from relapse.data.corpora.hub import CorpusError

CONTRACT = ("forget", "retain", "retain_eval", "holdout", "verbmem_forget", "knowmem_forget_qa",
            "knowmem_forget_qa_icl", "knowmem_retain_qa", "knowmem_retain_qa_icl",
            "privleak_forget", "privleak_holdout")


@pytest.fixture(scope="module")
def tokenizer():
    from relapse.models.tokenizer import train_tokenizer

    texts = [" ".join(f"f{i}w{j}" for j in range(40)) for i in range(10)]
    return train_tokenizer(texts + ["Question: What is it?\nAnswer: this"], 400)


def test_registry_lists_one_kind_per_file():
    assert corpus_kinds() == ["muse", "synthetic", "tofu", "wmdp"]
    with pytest.raises(KeyError, match="allowed: muse, synthetic, tofu, wmdp"):
        get_corpus("wmdp_bio")


def test_chunks_cover_the_text_and_fit_max_length(tokenizer):
    text = " ".join(f"f1w{j}" for j in range(40))
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    chunks = chunk_text(text, tokenizer, 16)
    assert "".join(chunks) == text  # exact substrings, nothing lost between them
    assert len(chunks) == -(-n // 15)  # 15 text tokens + BOS per chunk
    assert all(len(tokenizer(c)["input_ids"]) <= 16 for c in chunks)
    assert chunk_text("short", tokenizer, 16) == ["short"]


@pytest.mark.parametrize("old_names", [False, True])
def test_muse_maps_onto_the_contract(tmp_path, tokenizer, old_names):
    source = muse_snapshot(tmp_path / "MUSE-News", old_names=old_names)
    cfg = {"kind": "muse", "subset": "news", "source": str(source), "max_length": 16}
    splits, record = get_corpus("muse").build(cfg, tokenizer)
    assert set(CONTRACT) <= set(splits)
    sizes = {k: len(splits[k]) for k in ("retain_eval", "holdout", "verbmem_forget",
                                         "knowmem_forget_qa", "knowmem_retain_qa_icl")}
    assert sizes == {"retain_eval": 5, "holdout": 3, "verbmem_forget": 7, "knowmem_forget_qa": 8,
                     "knowmem_retain_qa_icl": 3}
    assert list(splits["verbmem_forget"].columns) == ["pid", "prompt", "gt"]
    assert list(splits["knowmem_retain_qa"].columns) == ["pid", "question", "answer"]
    assert splits["knowmem_retain_qa"].question[0] == "What is retain 0?"
    # packing: stream (the default) -- windows of the joined texts, checked in detail below
    assert list(splits["forget"].columns) == ["pid", "doc", "doc_last", "wrapped", "text",
                                              "input_ids"]
    assert record["packing"]["mode"] == "stream"
    assert record["packing"]["forget"]["windows"] == len(splits["forget"])
    used = record["splits_used"]
    assert used["knowmem_retain_qa"] == ("knowmem/retain2_qa" if old_names else "knowmem/retain_qa")
    assert any(f.endswith("retain1-00000-of-00001.parquet") for f in record["files"]["raw/retain1"])


def test_article_packing_keeps_one_sample_per_article_cut_at_max_length(tmp_path, tokenizer):
    source = muse_snapshot(tmp_path / "MUSE-News")
    cfg = {"kind": "muse", "source": str(source), "max_length": 16, "packing": "article"}
    splits, record = get_corpus("muse").build(cfg, tokenizer)
    # 4 forget texts of 40 words are cut into chunks; each document is rebuilt from its chunks.
    forget = splits["forget"]
    assert "input_ids" not in forget.columns  # tokenized at training time, with BOS and EOS
    assert len(forget) > 4 and set(forget.doc) == {0, 1, 2, 3}
    assert "".join(forget[forget.doc == 2].text) == " ".join(f"f2w{j}" for j in range(40))
    per_article = [len(tokenizer(" ".join(f"f{i}w{j}" for j in range(40)),
                                 add_special_tokens=False)["input_ids"]) for i in range(4)]
    assert len(forget) == sum(-(-n // 15) for n in per_article)  # 15 text tokens + BOS
    assert record["packing"] == {
        "mode": "article", "max_length": 16,
        "forget": {"documents": 4, "windows": len(forget)},
        "retain": {"documents": 6, "windows": len(splits["retain"])}}


def _stream_ids(tokenizer, n_texts, prefix):
    """The texts of the snapshot's raw split joined as MUSE's load_data.py writes its .txt file
    (a blank line between texts), and their token ids without special tokens."""
    stream = "\n\n".join(" ".join(f"{prefix}{i}w{j}" for j in range(40)) for i in range(n_texts))
    return stream, tokenizer(stream, add_special_tokens=False)["input_ids"]


def test_stream_packing_cuts_muse_windows(tmp_path, tokenizer):
    """MUSE's DefaultDataset on raw/forget.txt, counted by hand: windows of 15 stream tokens,
    each after a BOS, so 16 tokens; the short last window is filled up with the first window's
    start (its BOS included); the windows' texts are the stream, in order."""
    source = muse_snapshot(tmp_path / "MUSE-News")
    cfg = {"kind": "muse", "source": str(source), "max_length": 16}
    splits, record = get_corpus("muse").build(cfg, tokenizer)
    bos = tokenizer.bos_token_id
    for name, n_texts, prefix in (("forget", 4, "f"), ("retain", 6, "r")):
        stream, ids = _stream_ids(tokenizer, n_texts, prefix)
        n = len(ids)
        full, rest = divmod(n, 15)
        assert rest  # this snapshot's streams end in a short window (the case MUSE fills up)
        split = splits[name]
        windows = [list(w) for w in split.input_ids]
        assert len(windows) == full + 1 and list(split.pid) == list(range(full + 1))
        for k in range(full):
            assert windows[k] == [bos] + ids[15 * k:15 * (k + 1)]
        # the last: BOS, the last `rest` tokens, then BOS and the stream's first 16-2-rest tokens
        assert windows[-1] == [bos] + ids[15 * full:] + [bos] + ids[:16 - 2 - rest]
        assert all(len(w) == 16 for w in windows)
        assert list(split.wrapped) == [0] * full + [16 - 1 - rest]
        # texts: the stream exactly, then the filled-in tokens' text
        joined = "".join(split.text)
        assert joined.startswith(stream)
        head = joined[len(stream):]
        assert stream.startswith(head)
        assert tokenizer(head, add_special_tokens=False)["input_ids"] == ids[:16 - 2 - rest]
        # every article boundary lies in some window; the first and last articles are where
        # the stream starts and ends
        assert split.doc.iloc[0] == 0 and split.doc_last.iloc[-1] == n_texts - 1
        assert list(split.doc) == sorted(split.doc) and set(split.doc) | set(split.doc_last) \
            == set(range(n_texts))
        assert record["packing"][name] == {"documents": n_texts, "tokens": n,
                                           "wrapped": 16 - 1 - rest, "windows": full + 1}
    assert record["packing"]["mode"] == "stream" and record["packing"]["joiner"] == "\n\n"


def test_stream_packing_edges_as_muse(tokenizer):
    """A stream that fills its windows exactly is not filled up; one shorter than a window is
    filled up with itself, as MUSE's code does (`concat([w[-1], w[0]])[:max_len]`)."""
    from relapse.data.corpora.chunking import pack_stream

    texts = ["f1w1 f1w2 f1w3", "f2w1"]
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos, n = tokenizer.bos_token_id, len(ids)
    windows, tokens = pack_stream(texts, tokenizer, n + 1)
    assert tokens == n and [w["input_ids"] for w in windows] == [[bos] + ids]
    assert windows[0]["wrapped"] == 0 and windows[0]["text"] == "f1w1 f1w2 f1w3\n\nf2w1"
    windows, _ = pack_stream(texts, tokenizer, n + 4)
    assert [w["input_ids"] for w in windows] == [[bos] + ids + [bos] + ids[:2]]
    assert windows[0]["wrapped"] == 3
    assert pack_stream([], tokenizer, 16) == ([], 0)
    with pytest.raises(ValueError, match="max_length: 1 leaves no room"):
        pack_stream(texts, tokenizer, 1)


def test_window_texts_do_not_tokenize_back_with_a_llama_style_tokenizer():
    """Why the windows are stored as ids: Llama-2's tokenizer (MUSE's targets) marks a word's
    start with "▁" and prefixes one to a text's first word. A window that starts inside a word
    ("5" of "f2w35") would train on "▁5" if its text were tokenized again."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from relapse.data.corpora.chunking import pack_stream

    texts = [" ".join(f"f{i}w{j}" for j in range(40)) for i in range(4)]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", core.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    windows, _ = pack_stream(texts, tok, 16)
    ids = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    assert [t for w in windows[:-1] for t in w["input_ids"][1:]] == ids[:15 * (len(windows) - 1)]
    inside_a_word = [w for w in windows[:-1] if not w["text"][0].isspace()][1:]  # not the first
    assert inside_a_word
    for w in inside_a_word:
        again = tok(w["text"])["input_ids"]
        assert again != w["input_ids"]
        assert tok.convert_ids_to_tokens(again[1]) == "▁"


def test_packed_windows_are_what_training_and_relearning_feed(tmp_path, tiny_lm):
    """The stored ids reach the model verbatim: no BOS or EOS added, and an unlearning epoch is
    ceil(windows / batch_size) optimizer steps over exactly the windows' tokens. The old path
    tokenized each window's text again and appended EOS, which changes the ids."""
    import math

    from relapse.attacks.kinds.relearn import attack_sample
    from relapse.data.prepare import prepare
    from relapse.models.batching import training_rows
    from relapse.unlearn.trainer import unlearn

    folder, _, tok = tiny_lm
    data = tmp_path / "d"
    prepare("news", {"kind": "muse", "source": str(muse_snapshot(tmp_path / "m")),
                     "max_length": 32}, data, tokenizer_dir=folder)
    forget = pd.read_parquet(data / "forget.parquet")
    stored = [[int(i) for i in w] for w in forget.input_ids]
    assert training_rows(tok, forget) == [(w, 0) for w in stored]   # ids as stored, no mask
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["source"]["packing"]["forget"]["windows"] == len(forget)
    sample = attack_sample(data, "forget", 3, 0)
    assert training_rows(tok, sample) == [(stored[p], 0) for p in sample.pid]

    cfg = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper"}
    unlearn("ga", {"lr": 1e-4, "epochs": 1, "params": "full"}, 0, folder, data, cfg,
            tmp_path / "run")
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert len(log) == math.ceil(len(forget) / 4)
    assert int(log.tokens.sum()) == sum(len(w) for w in stored) == 32 * len(forget)


def test_packing_is_validated(tmp_path):
    from relapse.config import ConfigError, validate

    source = str(muse_snapshot(tmp_path / "m"))
    ref = {"kind": "pretrained", "target": "muse-bench/MUSE-News_target",
           "retrain": "muse-bench/MUSE-News_retrain"}

    def cfg(corpus, reference=ref):
        from pathlib import Path

        import yaml

        default = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
        return {**{k: v for k, v in yaml.safe_load(default.read_text()).items()
                   if k != "attacks"},               # its slice names synthbio
                "benchmarks": {"news": {"corpus": corpus, "reference": reference}}}

    with pytest.raises(ConfigError, match=r"corpus.packing: 'window' is not allowed; allowed: "
                                          r"stream, article"):
        validate(cfg({"kind": "muse", "source": source, "packing": "window"}))
    with pytest.raises(ConfigError, match=r"corpus.packing: only read with kind: muse, not kind: "
                                          r"synthetic"):
        validate(cfg({"kind": "synthetic", "packing": "stream"}, {"kind": "train"}))
    assert "packing" not in validate(cfg({"kind": "muse", "source": source}))["benchmarks"][
        "news"]["corpus"]  # the default lives in the corpus kind (muse.PACKING), not the config


def test_muse_missing_split_names_source_config_split_and_what_exists(tmp_path):
    source = muse_snapshot(tmp_path / "m", drop=("knowmem", "forget_qa"))
    cfg = {"kind": "muse", "source": str(source)}
    with pytest.raises(CorpusError) as err:
        get_corpus("muse").check(cfg)
    msg = str(err.value)
    for part in (str(source), "'knowmem'", "'forget_qa'", "forget_qa_icl", "retain_qa"):
        assert part in msg


def test_missing_config_is_named(tmp_path):
    source = tofu_snapshot(tmp_path / "t", drop="holdout10")
    with pytest.raises(CorpusError, match=r"no config 'holdout10'; configs there: .*forget10"):
        get_corpus("tofu").check({"kind": "tofu", "forget": "forget10", "source": str(source)})


@pytest.mark.parametrize("layout", ["configs", "default"])
def test_tofu_both_layouts(tmp_path, layout):
    source = tofu_snapshot(tmp_path / "TOFU", layout)
    cfg = {"kind": "tofu", "forget": "forget10", "source": str(source)}
    splits, record = get_corpus("tofu").build(cfg)
    assert set(CONTRACT) <= set(splits)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes["forget"] == 40 and sizes["retain"] == 360 and sizes["holdout"] == 40
    assert sizes["knowmem_retain_qa"] == 350 and sizes["knowmem_forget_qa_icl"] == 10
    # ICL examples are never asked
    assert not set(splits["knowmem_retain_qa"].question) & set(splits["knowmem_retain_qa_icl"].question)
    assert sizes["tofu_real_authors_perturbed"] == 10 and sizes["tofu_world_facts_perturbed"] == 12
    assert splits["forget"].text[0] == "Question: What is forget 0?\nAnswer: forget answer 0"
    verb = splits["verbmem_forget"]
    assert verb.prompt[0] == "Question: What is forget 0?\nAnswer: " and verb["gt"][0] == "forget answer 0"
    tf = splits["tofu_forget_perturbed"]
    assert tf.base_answer[0] == "forget paraphrase 0" and list(tf.perturbed[0])[2] == "forget wrong 0.2"
    # real_authors compares with the answer itself (TOFU has no paraphrase there)
    assert splits["tofu_real_authors_perturbed"].base_answer[0] == "real answer 0"
    where = "default/forget10" if layout == "default" else "forget10/train"
    assert record["splits_used"]["forget"] == where


def test_tofu_default_layout_missing_split(tmp_path):
    source = tofu_snapshot(tmp_path / "t", "default", drop="world_facts_perturbed")
    with pytest.raises(CorpusError) as err:
        get_corpus("tofu").check({"kind": "tofu", "source": str(source)})
    assert "config 'default': no split 'world_facts_perturbed'" in str(err.value)
    assert "retain90" in str(err.value)  # what exists


def test_tofu_forget_must_be_a_subset():
    with pytest.raises(ValueError, match="allowed: forget01, forget05, forget10"):
        get_corpus("tofu").wanted({"forget": "forget20"}, None)


def _prepared_muse(tmp_path, tokenizer):
    """(snapshot, data folder): a MUSE-shaped snapshot prepared with `tokenizer`, windows of 16."""
    from relapse.data.prepare import prepare

    source = muse_snapshot(tmp_path / "m")
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(str(tok_dir))
    out = tmp_path / "data"
    prepare("news", {"kind": "muse", "source": str(source), "max_length": 16}, out,
            tokenizer_dir=tok_dir)
    return source, out


def test_prepare_writes_splits_and_records_the_source(tmp_path, tokenizer):
    from relapse.io import read_parquet_metadata

    source, out = _prepared_muse(tmp_path, tokenizer)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["source"] == str(source) and manifest["splits"]["holdout"] == 3
    assert pd.read_parquet(out / "knowmem_forget_qa.parquet").shape == (8, 3)
    meta = read_parquet_metadata(out / "forget.parquet")
    assert meta["source"]["splits_used"]["forget"] == "raw/forget"


@pytest.mark.slow
def test_muse_end_to_end_on_a_snapshot_with_a_tiny_llama(tmp_path, tiny_lm):
    """kind: muse on a generated snapshot, with a tiny Llama saved in hub format as the target
    and the retrain: fetch, prepare, unlearn, quantize and evaluate run through Snakemake."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    model_dir, _, _ = tiny_lm
    source = muse_snapshot(tmp_path / "MUSE-News")
    cfg = muse_bench_config(
        source, model_dir, [{"scheme": "none", "bits": [16]},
                            {"scheme": "rtn", "bits": [4], "group_size": 32}],
        unlearning={"batch_size": 4},
        evaluation={"knowmem": {"shots": "all", "max_new_tokens": 8},
                    "verbmem": {"max_new_tokens": 8}, "bootstrap": {"samples": 10}})
    config = tmp_path / "muse_tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cell = "results/news/ga/epochs=1_lr=0.0001_params=full/s0/rtn-w4/metrics.parquet"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), cell, "-s", str(root / "Snakefile"),
         "-d", str(tmp_path / "run"), "--cores", "2", "--configfile", str(config)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "run" / "logs").rglob("*.log")) \
        if (tmp_path / "run" / "logs").exists() else ""
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + logs
    metrics = pd.read_parquet(tmp_path / "run" / cell)
    assert {("knowmem", "forget"), ("knowmem", "retain"), ("verbmem", "forget"),
            ("privleak", "forget")} <= set(zip(metrics.metric, metrics.split))
    assert ("knowmem", "holdout") not in set(zip(metrics.metric, metrics.split))  # MUSE has none
    manifest = json.loads((tmp_path / "run" / "results/news/data/manifest.json").read_text())
    assert manifest["source"]["source"] == str(source)
    assert manifest["source"]["packing"]["forget"]["windows"] > 4


def test_muse_splits_run_through_knowmem_and_verbmem(tmp_path, tiny_lm):
    """MUSE has no holdout QA and no per-text facts: those rows are left out, not faked."""
    from relapse.data.prepare import prepare
    from relapse.evaluate.registry import get_metric
    from relapse.evaluate.stage import EvalContext

    folder, model, tok = tiny_lm
    prepare("news", {"kind": "muse", "source": str(muse_snapshot(tmp_path / "m")),
                     "max_length": 32}, tmp_path / "d", tokenizer_dir=folder)
    cfg = {"knowmem": {"shots": "all", "max_new_tokens": 4}, "verbmem": {"max_new_tokens": 4}}
    ctx = EvalContext(model, tok, tmp_path / "d", cfg, 8)
    knowmem = {(r.metric, r.split): len(r.scores) for r in get_metric("knowmem")(ctx)}
    assert knowmem == {("knowmem", "forget"): 8, ("qa_em", "forget"): 8,
                       ("knowmem", "retain"): 8, ("qa_em", "retain"): 8}
    verbmem = get_metric("verbmem")(ctx)
    assert [(r.metric, len(r.scores)) for r in verbmem] == [("verbmem", 7)]


def test_tofu_relearning_split_shares_no_author_with_the_heldout_questions(tmp_path):
    """TOFU's forget subsets are whole authors of 20 consecutive QA pairs: a snapshot whose 60
    forget pairs name their author (3 authors) is split by author, round(3 x 0.5) = 2 held out,
    and the relearning texts name none of them."""
    from hub_snapshots import tofu_subsets, write_snapshot

    from relapse.attacks.kinds.relearn import attack_texts
    from relapse.data.prepare import prepare

    subsets = tofu_subsets()
    subsets["forget10"] = pd.DataFrame({
        "question": [f"Which book did Author{i // 20}X write, fact {i}?" for i in range(60)],
        "answer": [f"answer {i}" for i in range(60)]})
    source = write_snapshot(tmp_path / "TOFU", {k: {"train": v} for k, v in subsets.items()})
    out = tmp_path / "data"
    prepare("tofu", {"kind": "tofu", "forget": "forget10", "source": str(source)}, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["relearn"]["recovery"] == "held-out"
    assert manifest["relearn"]["unit"] == "author"
    held = pd.read_parquet(out / "knowmem_forget_heldout_qa.parquet")
    relearn = pd.read_parquet(out / "relearn_forget.parquet")
    assert (len(held), len(relearn)) == (40, 20)
    authors = lambda texts: {t.split("Author")[1].split("X")[0] for t in texts}   # noqa: E731
    assert len(authors(held.question)) == 2 and len(authors(relearn.text)) == 1
    assert not authors(held.question) & authors(attack_texts(out, "forget", 16, 0))
    # the held-out rows are knowmem_forget_qa's rows, pid and all
    forget_qa = pd.read_parquet(out / "knowmem_forget_qa.parquet")
    assert held.merge(forget_qa).shape == held.shape


def test_muse_relearning_stays_in_sample(tmp_path, tokenizer):
    """MUSE's QA pairs name no article: its published relearning protocol (forget data, scored
    on the same forget QA), recorded as in-sample."""
    source, out = _prepared_muse(tmp_path, tokenizer)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["relearn"]["recovery"] == "in-sample"
    assert "no source" in manifest["relearn"]["reason"]
    assert not (out / "knowmem_forget_heldout_qa.parquet").exists()
    assert pd.read_parquet(out / "relearn_forget.parquet").text.tolist() == \
        pd.read_parquet(out / "forget.parquet").text.tolist()


def test_a_failed_corpus_load_names_the_source_and_revision(tmp_path, monkeypatch):
    import datasets

    from relapse.data.corpora.hub import CorpusError, Source

    src = Source("muse-bench/MUSE-News", "r1")
    src._configs, src._splits = ["raw"], {"raw": {"forget": ["hf://x/raw/forget.parquet"]}}

    def failing_load(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", failing_load)
    with pytest.raises(CorpusError, match=r"'muse-bench/MUSE-News' at revision r1, config 'raw', "
                                          r"split 'forget': cannot load it .*no network"):
        src.load("raw", "forget", ("text",))


def test_a_failed_config_listing_names_the_source_and_revision(monkeypatch):
    import datasets

    from relapse.data.corpora.hub import CorpusError, config_names

    def failing(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "get_dataset_config_names", failing)
    with pytest.raises(CorpusError, match=r"'locuslab/TOFU' at revision v2: cannot list its "
                                          r"configs \(ConnectionError: no network\)"):
        config_names("locuslab/TOFU", "v2")


def test_a_snapshot_whose_readme_declares_no_data_files_is_left_to_datasets(tmp_path):
    """Only `data_files` metadata is read without datasets; a README with `data_dir:` configs
    (or none) is resolved by datasets itself, as the data stage resolves it."""
    from relapse.data.corpora.hub import LocalSnapshot

    root = muse_snapshot(tmp_path / "muse")
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("data_files:", "data_dir: raw\n  x_files:", 1))
    assert LocalSnapshot(str(root)).meta is None
    assert LocalSnapshot(str(muse_snapshot(tmp_path / "plain"))).meta is not None


def test_a_hub_corpus_is_checked_before_any_model_download(tmp_path, monkeypatch):
    """check-corpus resolves every config and split from the repository's metadata (here a
    stand-in for the hub's listing), and a missing split fails, naming it, with no model
    fetched: fetch_pretrained waits for this job (workflow/rules/reference.smk)."""
    from relapse.cli import main
    from relapse.data.corpora import hub

    local = muse_snapshot(tmp_path / "m", drop=("knowmem", "forget_qa"))
    real_names, real_files = hub.config_names, hub.split_files
    monkeypatch.setattr(hub, "config_names",
                        lambda source, revision=None: real_names(str(local)))
    monkeypatch.setattr(hub, "split_files", lambda source, name, revision=None, names=None:
                        real_files(str(local), name, None, names))
    monkeypatch.setattr(hub, "is_local", lambda source: False)
    settings = json.dumps({"corpus": {"kind": "muse", "subset": "news"}})
    out = tmp_path / "corpus_check.json"
    with pytest.raises(SystemExit, match=r"benchmarks\.news\.corpus: .*'muse-bench/MUSE-News'"
                                         r".*config 'knowmem': no split 'forget_qa'"):
        main(["check-corpus", "--settings", settings, "--bench", "news", "--out", str(out)])
    assert not out.exists()
    local = muse_snapshot(tmp_path / "ok")
    assert main(["check-corpus", "--settings", settings, "--bench", "news",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["source"] == "muse-bench/MUSE-News" and not record["local"]
    assert record["splits_used"]["knowmem_forget_qa"] == "knowmem/forget_qa"

