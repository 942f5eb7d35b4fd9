import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from relapse.data.prepare import prepare
from relapse.data.prompts import few_shot_prompt
from relapse.evaluate.registry import metric_names
from relapse.evaluate.stage import evaluate_model
from relapse.io import read_parquet_metadata
from relapse.models.generation import greedy_generate

ROOT = Path(__file__).resolve().parents[1]


def test_batched_greedy_equals_batch_of_one(tiny_lm):
    _, model, tok = tiny_lm
    prompts = ["Question: Where was Alden Ashdown born?\nAnswer: ", "Brisa",
               "Alden Ashdown was born in Veloria in 1934. He studied at ",
               few_shot_prompt([("Q1?", "A1"), ("Q2?", "A2")], "Where?")]
    batched = greedy_generate(model, tok, prompts, 12, batch_size=4)
    single = [greedy_generate(model, tok, [p], 12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(o for o in batched)


def test_stop_strings_change_nothing_after_the_cut(qa_lm):
    from relapse.data.prompts import STOPS
    from relapse.models.generation import cut_at_stops

    model, tok = qa_lm
    prompts = [few_shot_prompt([("Where was Alden Ashdown born?", "Veloria")], q)
               for q in ("Where was Brisa Carrow born?", "Which instrument does Ivo Oakes play?",
                         "What is the profession of Wren Dray?")]
    full = greedy_generate(model, tok, prompts, 24, batch_size=3)
    stopped = greedy_generate(model, tok, prompts, 24, batch_size=3, stop_strings=STOPS)
    assert [cut_at_stops(o, STOPS) for o in full] == [cut_at_stops(o, STOPS) for o in stopped]
    assert any(len(s) < len(f) for s, f in zip(stopped, full)), "no row stopped early"


def test_shared_prefix_cache_gives_the_same_continuations(qa_lm):
    """KnowMem prompts share their few-shot examples; forwarding that prefix once and copying
    its KV cache across the batch (pads then sit between prefix and question) must not change
    a single generated token, for rows of different lengths."""
    from relapse.models.generation import MIN_SHARED_PREFIX, shared_prefix_length
    from relapse.models.batching import prompt_ids

    model, tok = qa_lm
    shots = [("Where was Alden Ashdown born?", "Veloria"),
             ("Which instrument does Ivo Oakes play?", "the cello")]
    prompts = [few_shot_prompt(shots, q) for q in (
        "Where was Brisa Carrow born?", "What is the profession of Wren Dray?",
        "In which year was the famous painter Ottilie Marsh of Veloria born?")]
    encoded = [prompt_ids(tok, p) for p in prompts]
    assert shared_prefix_length(encoded) >= MIN_SHARED_PREFIX, "the test must use the cache"
    assert len({len(e) for e in encoded}) == 3, "rows of different lengths need padding"
    cached = greedy_generate(model, tok, prompts, 16, batch_size=3)
    plain = greedy_generate(model, tok, prompts, 16, batch_size=3, share_prefix=False)
    single = [greedy_generate(model, tok, [p], 16, batch_size=1, share_prefix=False)[0]
              for p in prompts]
    assert cached == plain == single
    assert all(cached)


def test_shared_prefix_length_leaves_a_token_to_feed():
    from relapse.models.generation import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[1, 2], [7, 2]]) == 0


def test_few_shot_prompt_is_muse_format():
    assert few_shot_prompt([("Q1?", "A1")], "Q2?") == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
    assert few_shot_prompt([], "Q?") == "Question: Q?\nAnswer: "


def test_evaluate_writes_long_metrics_with_keys_and_samples(tmp_path, tiny_lm):
    folder, _, _ = tiny_lm
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, tmp_path / "data")
    keys = {"bench": "t", "method": "target", "hp": "default", "params": "none", "seed": 0,
            "quant": "none-w16", "quant_scheme": "none", "bits": 16}
    cfg = {"metrics": ["knowmem", "verbmem"], "batch_size": 8, "bootstrap": {"samples": 50},
           "knowmem": {"shots": 2, "max_new_tokens": 6, "max_items": 5},
           "verbmem": {"max_new_tokens": 8, "max_items": 1}}
    evaluate_model(folder, tmp_path / "data", keys, cfg, tmp_path / "m.parquet", tmp_path / "s.parquet")
    metrics = pd.read_parquet(tmp_path / "m.parquet")
    samples = pd.read_parquet(tmp_path / "s.parquet")
    assert set(zip(metrics.metric, metrics.split)) == {
        ("knowmem", "forget"), ("knowmem", "retain"), ("knowmem", "holdout"),
        ("qa_em", "forget"), ("qa_em", "retain"), ("qa_em", "holdout"),
        ("verbmem", "forget"), ("verbmem_facts", "forget")}
    for key, value in keys.items():
        assert (metrics[key] == value).all()
    assert (metrics[metrics.metric == "knowmem"].n == 5).all()
    assert (metrics[metrics.metric == "verbmem"].n == 1).all()
    # per-item scores reproduce the means
    km = samples[(samples.metric == "knowmem") & (samples.split == "forget")]
    row = metrics[(metrics.metric == "knowmem") & (metrics.split == "forget")].iloc[0]
    assert row.value == pytest.approx(km.rougeL_f1.mean() * 100)
    meta = read_parquet_metadata(tmp_path / "m.parquet")
    assert meta["keys"] == keys and "torch" in meta["versions"]


def test_registry_lists_metrics():
    assert {"knowmem", "verbmem", "privleak", "utility"} <= set(metric_names())


def test_metric_registry_stays_torch_free():
    """The Snakefile validates the config, which loads every metric module: none may pull in
    torch (each Snakemake job and dry run would pay for it)."""
    import subprocess
    import sys

    code = ("import sys; from relapse.evaluate.registry import metric_names; metric_names(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_config_runs_the_full_metric_set(default_config):
    ev = default_config["evaluation"]
    assert {"knowmem", "verbmem", "privleak", "utility"} <= set(ev["metrics"])
    assert ev["privleak"]["k"] == 40 and ev["scoring"]["batch_size"] >= 1


def test_evaluate_cli_passes_the_retrain_metrics(monkeypatch):
    import relapse.evaluate.stage as stage
    from relapse.cli import main

    seen = {}
    monkeypatch.setattr(stage, "evaluate_model", lambda *a, **kw: seen.update(kw))
    args = ["evaluate", "--settings", '{"device": "cpu", "evaluation": {}, '
            '"quant": {"scheme": "none", "bits": 16}}', "--bench", "b", "--method", "npo",
            "--hp", "lr=1", "--seed", "0", "--quant", "none-w16", "--model", "m", "--data", "d",
            "--metrics", "m.parquet", "--samples", "s.parquet"]
    refs = ["--retrain-metrics", "r.parquet", "--full-retrain-metrics", "f.parquet"]
    assert main(args + refs) == 0
    assert (seen["retrain_metrics"], seen["full_retrain_metrics"]) == ("r.parquet", "f.parquet")
    assert main(args) == 0 and seen["retrain_metrics"] is seen["full_retrain_metrics"] is None


# --- evaluation dtype (DESIGN §7) ---------------------------------------------------------------

def _spy_loader(monkeypatch, model):
    """Replace the model loader: record (device, dtype) and hand back `model` cast to that dtype
    on the CPU, so that a CUDA configuration runs here."""
    import relapse.quantize.runtime as runtime

    seen = []

    def load(model_dir, device="cpu", dtype="float32", **kw):
        import torch

        seen.append((device, dtype))
        return copy.deepcopy(model).to(getattr(torch, dtype))

    monkeypatch.setattr(runtime, "load_quantized_model", load)
    return seen


QA_CFG = {"metrics": ["knowmem"], "batch_size": 8, "bootstrap": {"samples": 0},
          "knowmem": {"shots": 1, "max_new_tokens": 2, "max_items": 2}}
KEYS = {"bench": "t", "method": "target", "hp": "default", "params": "none", "seed": 0,
        "quant": "rtn-w8", "quant_scheme": "rtn", "bits": 8}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "data"
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, out)
    return out


def test_default_dtype_is_float32_on_every_device(monkeypatch, tmp_path, tiny_lm, small_data):
    """The old stage loaded every cell in bf16 on CUDA, moving fake-quantized weights off
    their grid: with no dtype configured, a CUDA evaluation loads float32, and says so. The real
    loader reads a folder saved in bfloat16, so a loader that kept the file's dtype (or a stage
    that asked for bf16 on CUDA) fails here; without a GPU, only the device it is handed is
    swapped for the CPU."""
    import torch

    import relapse.evaluate.metrics.knowmem as knowmem
    import relapse.quantize.runtime as runtime
    from relapse.models.io import save_model

    source, model, tok = tiny_lm
    folder = tmp_path / "bf16"
    save_model(copy.deepcopy(model).to(torch.bfloat16), folder, source)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    real_load, seen, generated = runtime.load_quantized_model, [], []

    def load_here(model_dir, device="cpu", **kw):
        seen.append((device, kw.get("dtype")))
        return real_load(model_dir, device=device if torch.cuda.is_available() else "cpu", **kw)

    monkeypatch.setattr(runtime, "load_quantized_model", load_here)
    real_generate = knowmem.greedy_generate
    monkeypatch.setattr(knowmem, "greedy_generate",
                        lambda m, *a, **kw: generated.append(next(m.parameters()).dtype)
                        or real_generate(m, *a, **kw))
    m = evaluate_model(folder, small_data, KEYS, QA_CFG, tmp_path / "m.parquet",
                       tmp_path / "s.parquet", device="cuda")
    assert seen == [("cuda", "float32")] and set(generated) == {torch.float32}
    assert (m.dtype == "float32").all()
    assert (pd.read_parquet(tmp_path / "m.parquet").dtype == "float32").all()


def test_configured_dtype_is_loaded_and_recorded(monkeypatch, tmp_path, tiny_lm, small_data):
    import torch

    folder, model, _ = tiny_lm
    seen = _spy_loader(monkeypatch, model)
    loaded = []
    import relapse.evaluate.metrics.knowmem as knowmem

    real = knowmem.greedy_generate
    monkeypatch.setattr(knowmem, "greedy_generate",
                        lambda m, *a, **kw: loaded.append(next(m.parameters()).dtype)
                        or real(m, *a, **kw))
    m = evaluate_model(folder, small_data, KEYS, {**QA_CFG, "dtype": "bfloat16"},
                       tmp_path / "m.parquet", tmp_path / "s.parquet", device="cpu")
    assert seen == [("cpu", "bfloat16")] and set(loaded) == {torch.bfloat16}
    assert (m.dtype == "bfloat16").all() and len(m) == 6
    with pytest.raises(ValueError, match="evaluation.dtype: 'fp8'"):
        evaluate_model(folder, small_data, KEYS, {**QA_CFG, "dtype": "fp8"},
                       tmp_path / "m.parquet", tmp_path / "s.parquet")


def test_config_dtype_defaults_to_float32_whatever_the_device(default_config):
    from relapse.config import validate

    assert default_config["evaluation"]["dtype"] == "float32"
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for device in ("auto", "cpu", "cuda"):
        raw["device"] = device
        raw["evaluation"].pop("dtype", None)
        assert validate(raw)["evaluation"]["dtype"] == "float32"


# --- KnowMem and VerbMem on known generations ---------------------------------------------------

class WordTokenizer:
    """A tokenizer with one token per whitespace word and an optional BOS, so that token counts
    can be done by hand."""

    bos_token_id = 0

    def __init__(self, bos: bool = True):
        self.bos = bos
        self.vocab = ["<s>"]

    def __call__(self, text, add_special_tokens=True):
        ids = []
        for word in text.split():
            if word not in self.vocab:
                self.vocab.append(word)
            ids.append(self.vocab.index(word))
        return {"input_ids": ([0] if self.bos and add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(self.vocab[i] for i in ids if not (skip_special_tokens and i == 0))


def test_verbmem_ground_truth_counts_bos_like_muse(tiny_lm):
    """MUSE tokenizes the ground truth with its special tokens and keeps the first
    max_new_tokens ids: with a BOS, that is max_new_tokens - 1 words of text."""
    from relapse.evaluate.metrics.verbmem import truncate_tokens

    text = "a b c d e f g"
    assert truncate_tokens(WordTokenizer(bos=True), text, 4) == "a b c"
    assert truncate_tokens(WordTokenizer(bos=False), text, 4) == "a b c d"
    assert truncate_tokens(WordTokenizer(bos=True), text, 50) == text
    # the project's tokenizer adds a BOS: 128 tokens keep 127 of the text
    _, _, tok = tiny_lm
    long = " ".join(["Alden Ashdown was born in Veloria in 1934."] * 40)
    content = tok(long, add_special_tokens=False)["input_ids"]
    assert tok(long)["input_ids"][0] == tok.bos_token_id and len(content) > 128
    assert truncate_tokens(tok, long, 128) == tok.decode(content[:127])


def _write(data_dir, name, rows):
    data_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(data_dir / f"{name}.parquet")


def _qa_data(data_dir):
    """Forget/retain/holdout QA with 12 ICL examples each; answers chosen for hand ROUGE."""
    icl = [{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(12)]
    qa = {"forget": [("Where was Alden born?", "Veloria"),
                     ("Which instrument does Ivo play?", "the cello")],
          "retain": [("What is Wren's job?", "a ship's cartographer")],
          "holdout": [("When was Brisa born?", "in 1934")]}
    for split, pairs in qa.items():
        _write(data_dir, f"knowmem_{split}_qa",
               [{"pid": i, "question": q, "answer": a} for i, (q, a) in enumerate(pairs)])
        _write(data_dir, f"knowmem_{split}_qa_icl", icl)


# What the "model" writes after each question: stop strings must cut it before scoring.
KNOWMEM_OUTPUTS = {
    "Where was Alden born?": "Veloria\n\nQuestion: Where was Ivo born?",
    "Which instrument does Ivo play?": "cello and piano\nQuestion: x",
    "What is Wren's job?": "cartographer of ships",
    "When was Brisa born?": "born in 1934 Question: y",
}


def _fake_generate(outputs, prompts_seen):
    def generate(model, tokenizer, prompts, max_new_tokens, batch_size=32, **kw):
        prompts_seen.extend(prompts)
        return [next(v for k, v in outputs.items() if p.endswith(f"Question: {k}\nAnswer: "))
                for p in prompts]
    return generate


def test_knowmem_scores_known_outputs_by_rouge_l_f1(monkeypatch, tmp_path):
    import relapse.evaluate.metrics.knowmem as knowmem
    from rouge_score import rouge_scorer

    from relapse.evaluate.stage import EvalContext

    _qa_data(tmp_path)
    prompts = []
    monkeypatch.setattr(knowmem, "greedy_generate", _fake_generate(KNOWMEM_OUTPUTS, prompts))
    ctx = EvalContext(None, None, tmp_path, {"knowmem": {"shots": 3}}, 8)
    results = {(r.metric, r.split): r for r in knowmem.knowmem(ctx)}
    forget = results[("knowmem", "forget")]
    # By hand (rouge-score's tokens: lowercase alphanumeric words):
    # "Veloria" vs "Veloria" after the cut at "\n\n": F1 = 1.
    # "the cello" vs "cello and piano" (cut at "\nQuestion"): LCS 1, P = 1/3, R = 1/2, F1 = 0.4.
    assert forget.scores == pytest.approx([1.0, 0.4])
    assert [s["output"] for s in forget.samples] == ["Veloria", "cello and piano"]
    # "a ship's cartographer" -> a, ship, s, cartographer; "cartographer of ships" -> LCS 1:
    # P = 1/3, R = 1/4, F1 = 2/7.
    assert results[("knowmem", "retain")].scores == pytest.approx([2 / 7])
    # "in 1934" vs "born in 1934 " (cut at "Question:"): LCS 2, P = 2/3, R = 1, F1 = 0.8.
    assert results[("knowmem", "holdout")].scores == pytest.approx([0.8])
    assert results[("qa_em", "forget")].scores == [1.0, 0.0]
    # and what rouge-score itself says, with MUSE's settings (no stemming)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for s in forget.samples:
        assert s["rougeL_f1"] == scorer.score(s["answer"], s["output"])["rougeL"].fmeasure
    assert forget.estimate(0)[0] * forget.scale == pytest.approx(70.0)
    # 3 shots: 3 ICL examples, then the question
    assert all(p.count("Question:") == 4 and p.startswith("Question: Q0?\nAnswer: A0\n\n")
               for p in prompts)


def test_knowmem_shots_all_uses_every_icl_example(monkeypatch, tmp_path):
    import relapse.evaluate.metrics.knowmem as knowmem

    from relapse.evaluate.stage import EvalContext

    _qa_data(tmp_path)
    prompts = []
    monkeypatch.setattr(knowmem, "greedy_generate", _fake_generate(KNOWMEM_OUTPUTS, prompts))
    knowmem.knowmem(EvalContext(None, None, tmp_path, {"knowmem": {"shots": "all"}}, 8))
    assert prompts and all(p.count("Question:") == 13 and "A11\n\n" in p for p in prompts)
    prompts.clear()
    knowmem.knowmem(EvalContext(None, None, tmp_path, {"knowmem": {"shots": 0}}, 8))
    assert all(p.startswith("Question: ") and p.count("Question:") == 1 for p in prompts)
    with pytest.raises(ValueError, match="evaluation.knowmem.shots: 13 but knowmem_forget_qa_icl"):
        knowmem.knowmem(EvalContext(None, None, tmp_path, {"knowmem": {"shots": 13}}, 8))


def test_knowmem_shots_schema_accepts_all():
    from relapse.config import ConfigError, validate

    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["evaluation"]["knowmem"]["shots"] = "all"
    assert validate(raw)["evaluation"]["knowmem"]["shots"] == "all"
    raw["evaluation"]["knowmem"]["shots"] = "every"
    with pytest.raises(ConfigError, match="evaluation.knowmem.shots: 'every'"):
        validate(raw)


def test_verbmem_scores_known_continuations_against_the_cut_ground_truth(monkeypatch, tmp_path):
    import relapse.evaluate.metrics.verbmem as verbmem

    from relapse.evaluate.stage import EvalContext

    _write(tmp_path, "verbmem_forget", [
        {"pid": 0, "prompt": "Alden Ashdown was", "gt": "born in Veloria in 1934 and he plays",
         "facts": ["Veloria", "1934"]},
        {"pid": 1, "prompt": "Ivo Oakes plays", "gt": "the cello in Port Elmira",
         "facts": ["cello"]}])
    outputs = {"Alden Ashdown was": "born in Norhaven in 1934", "Ivo Oakes plays": "the cello"}
    seen = []
    monkeypatch.setattr(verbmem, "greedy_generate",
                        lambda model, tok, prompts, max_new, *a, **kw:
                        seen.append(max_new) or [outputs[p] for p in prompts])
    ctx = EvalContext(None, WordTokenizer(bos=True), tmp_path,
                      {"verbmem": {"max_new_tokens": 5}}, 8)
    rouge, facts = verbmem.verbmem(ctx)
    assert seen == [5]
    # ground truths cut to 5 tokens with BOS: "born in Veloria in" and "the cello in Port".
    assert [s["gt"] for s in rouge.samples] == ["born in Veloria in", "the cello in Port"]
    # "born in Veloria in" vs "born in Norhaven in 1934": LCS 3 (born in in), P = 3/5, R = 3/4,
    # F1 = 2/3; "the cello in Port" vs "the cello": LCS 2, P = 1, R = 1/2, F1 = 2/3.
    assert rouge.scores == pytest.approx([2 / 3, 2 / 3])
    assert rouge.estimate(0)[0] * rouge.scale == pytest.approx(200 / 3)
    # facts recalled: 1934 of (Veloria, 1934); cello of (cello)
    assert facts.scores == [0.5, 1.0]


def test_captions_state_dtype_shots_and_generation_lengths(default_config):
    from relapse.config import load_config
    from relapse.report.captions import grid_caption, main_caption, retained_caption

    for caption in (main_caption(default_config), retained_caption(default_config),
                    grid_caption(default_config)):
        assert "Evaluated in float32." in caption
        assert "KnowMem: 3 shots (MUSE uses every ICL example, 10)" in caption
        assert "32 new tokens; VerbMem: 128 new tokens" in caption
        assert "not MUSE's" not in caption
    muse_like = {**default_config, "evaluation": {**default_config["evaluation"], "dtype":
                                                  "bfloat16", "knowmem": {"shots": "all"}}}
    caption = main_caption(muse_like)
    assert "Evaluated in bfloat16." in caption and "every ICL example as shots" in caption
    # SmolLM2's config generates 12 / 32 tokens to fit 2 CPU cores: its captions say so
    smollm2 = load_config(ROOT / "config" / "smollm2.yaml")
    assert "Generation lengths are not MUSE's (VerbMem 128, KnowMem 32" in main_caption(smollm2)
    assert "KnowMem: 3 shots" in main_caption(smollm2)
