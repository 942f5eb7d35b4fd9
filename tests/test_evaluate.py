import pandas as pd
import pytest

from relapse.data.prepare import prepare
from relapse.evaluate.generation import greedy_generate
from relapse.evaluate.metrics.knowmem import few_shot_prompt
from relapse.evaluate.registry import metric_names
from relapse.evaluate.stage import evaluate_model
from relapse.io import read_parquet_metadata


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
    from relapse.evaluate.generation import cut_at_stops
    from relapse.evaluate.metrics.knowmem import STOPS

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
    from relapse.evaluate.generation import MIN_SHARED_PREFIX, shared_prefix_length
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
    from relapse.evaluate.generation import shared_prefix_length

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
    assert main(args + ["--retrain-metrics", "r.parquet"]) == 0
    assert seen["retrain_metrics"] == "r.parquet"
    assert main(args) == 0 and seen["retrain_metrics"] is None


def test_evaluation_waits_for_the_retrain_at_the_same_quant(tmp_path, root):
    """PrivLeak's dependency is in the DAG: asking for the target's metrics at rtn-w4 schedules
    the retrain's evaluation at rtn-w4 first, which itself takes no retrain input."""
    import subprocess
    import sys

    target = "results/small/target/default/s0/rtn-w4/metrics.parquet"
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "-s", str(root / "Snakefile"),
                           "-d", str(tmp_path), "--cores", "1", "-n", "-p", "--configfile",
                           str(root / "tests/data/small.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = [line for line in proc.stdout.splitlines() if "relapse evaluate" in line]
    by_method = {m: [c for c in commands if f"--method {m} " in c] for m in ("retrain", "target")}
    assert len(commands) == 2 and all(len(c) == 1 for c in by_method.values())
    assert "--retrain-metrics" not in by_method["retrain"][0]
    assert ("--retrain-metrics results/small/retrain/default/s0/rtn-w4/metrics.parquet"
            in by_method["target"][0])
