"""Metric lm_eval: lm-evaluation-harness through relapse's evaluate stage, on made-up local
snapshots in the hub layouts of cais/wmdp and cais/mmlu, read offline. The accuracy is checked
against a direct computation here: for each item, the summed log-probability (plain torch) of
each choice continuation " A" ... " D" after the prompt, and the item is correct when the argmax
is the answer (lm-eval's multiple-choice `acc`)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from hub_snapshots import write_snapshot
from relapse.config import ConfigError, validate
from relapse.evaluate.stage import evaluate_model

KEYS = {"bench": "t", "method": "target", "hp": "default", "params": "none", "seed": 0,
        "quant": "none-w16", "quant_scheme": "none", "bits": 16}
LETTERS = "ABCD"
WMDP_TOPIC = {"wmdp_bio": ("wmdp-bio", "biology"), "wmdp_cyber": ("wmdp-cyber", "cybersecurity")}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def mcq(prefix: str, n: int, subject: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({
        "question": [f"Which {prefix} item {i} is right?" for i in range(n)],
        "choices": [[f"{prefix} option {i}.{k}" for k in range(4)] for i in range(n)],
        "answer": [(3 * i + 1) % 4 for i in range(n)]})
    if subject:
        frame.insert(1, "subject", subject)
    return frame


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_snapshots")
    wmdp = write_snapshot(root / "wmdp", {"wmdp-bio": {"test": mcq("bio", 7)},
                                          "wmdp-cyber": {"test": mcq("cyber", 5)}})
    mmlu = write_snapshot(root / "mmlu", {s: {"test": mcq(s, 4, s), "dev": mcq(s + "-dev", 5, s)}
                                          for s in ("anatomy", "astronomy")})
    return {"wmdp": wmdp, "mmlu": mmlu}


def direct_accuracy(model, tok, prompts: list[str], answers: list[int]):
    """(accuracy, per-item log-likelihoods [n, 4]): sum of log p(continuation tokens | prompt)
    for " A".." D". lm-eval's split of a (context, continuation) pair: the context's tokens,
    then the continuation's = the whole text's tokens beyond as many as the context has."""
    import torch

    lls = []
    for prompt in prompts:
        row = []
        ctx = tok(prompt).input_ids
        for letter in LETTERS:
            cont = tok(prompt + " " + letter).input_ids[len(ctx):]
            seq = ctx + cont
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            row.append(sum(float(logp[t - 1, seq[t]]) for t in range(len(ctx), len(seq))))
        lls.append(row)
    lls = np.array(lls)
    return float(np.mean(lls.argmax(1) == np.array(answers))), lls


def ll_tolerance(lls) -> float:
    """How far lm-eval's float32 log-likelihoods (batched and padded) may lie from the ones
    computed here one by one: a few ulps of each log-probability, summed over the
    continuation's tokens."""
    return 64 * float(np.finfo(np.float32).eps) * float(np.abs(lls).max())


def decisive(lls) -> np.ndarray:
    """Items whose best choice leads the next by more than twice the tolerance: their argmax is
    the same on any CPU. On a near-tie (a random tiny model can have one) the argmax may flip
    between two correct computations."""
    top = np.sort(lls, axis=1)
    return top[:, -1] - top[:, -2] > 2 * ll_tolerance(lls)


def assert_accuracy(value, lls, answers):
    """lm-eval's accuracy (x100) equals the direct argmax accuracy, a near-tie item counted
    either way."""
    correct = lls.argmax(1) == np.array(answers)
    sure = decisive(lls)
    low = 100 * np.mean(correct & sure)
    high = 100 * np.mean(correct | ~sure)
    assert low - 1e-9 <= value <= high + 1e-9, (value, low, high)
    if sure.all():
        assert value == pytest.approx(100 * np.mean(correct), abs=1e-9)


def wmdp_prompts(task: str, frame: pd.DataFrame) -> list[str]:
    """WMDP's zero-shot prompt as lm-eval's wmdp tasks write it."""
    topic = WMDP_TOPIC[task][1]
    return [f"The following are multiple choice questions (with answers) about {topic}.\n\n"
            f"{q}\n" + "".join(f"{LETTERS[k]}. {c}\n" for k, c in enumerate(cs)) + "Answer:"
            for q, cs in zip(frame.question, frame.choices)]


def run_cell(folder, tmp_path, data_dir, lcfg, keys=KEYS):
    cfg = {"metrics": ["lm_eval"], "batch_size": 4, "bootstrap": {"samples": 50},
           "lm_eval": lcfg}
    metrics = evaluate_model(folder, data_dir, keys, cfg, tmp_path / "m.parquet",
                             tmp_path / "s.parquet")
    return metrics, pd.read_parquet(tmp_path / "s.parquet")


def check_wmdp(model, tok, metrics, samples, task="wmdp_bio", n=7):
    frame = mcq(task.split("_")[1], 7 if task == "wmdp_bio" else 5).head(n)
    acc, lls = direct_accuracy(model, tok, wmdp_prompts(task, frame), list(frame.answer))
    row = metrics[(metrics.metric == "lm_eval") & (metrics.split == task)].iloc[0]
    assert row.n == n
    assert_accuracy(row.value, lls, list(frame.answer))
    got = samples[(samples.metric == "lm_eval") & (samples.split == task)].sort_values("item")
    logged = np.array(list(got.loglikelihoods))
    assert np.allclose(logged, lls, rtol=0, atol=ll_tolerance(lls))
    # per item: lm-eval's correctness is the argmax of its own log-likelihoods, and the direct
    # one's wherever that is decisive
    assert list(got.acc) == [float(c) for c in logged.argmax(1) == np.array(frame.answer)]
    correct = lls.argmax(1) == np.array(frame.answer)
    sure = decisive(lls)
    assert np.array_equal(np.array(got.acc)[sure], correct[sure].astype(float))
    assert row.value == pytest.approx(100 * np.mean(got.acc), abs=1e-9)
    # lm-eval's stderr of a mean of 0/1 items: the sample standard deviation over sqrt(n)
    assert row.stderr == pytest.approx(100 * np.std(np.array(got.acc), ddof=1) / math.sqrt(n),
                                       rel=1e-9)
    return acc


def test_wmdp_accuracy_equals_summed_logprob_argmax(tmp_path, tiny_lm, data_dir, snapshots):
    import lm_eval

    folder, model, tok = tiny_lm
    save = tmp_path / "cell"
    from relapse.quantize.stage import quantize_model

    quantize_model(folder, save, "none", 16, {})
    metrics, samples = run_cell(save, tmp_path, data_dir,
                                {"tasks": ["wmdp_bio", "wmdp_cyber"],
                                 "snapshots": {"wmdp_bio": str(snapshots["wmdp"]),
                                               "wmdp_cyber": str(snapshots["wmdp"])}})
    check_wmdp(model, tok, metrics, samples, "wmdp_bio")
    check_wmdp(model, tok, metrics, samples, "wmdp_cyber", 5)
    row = metrics[metrics.split == "wmdp_bio"].iloc[0]
    assert row.task == "wmdp_bio" and row.subtask == "wmdp_bio" and row.num_fewshot == 0
    assert row.lm_eval_version == lm_eval.__version__ and row.dataset == str(snapshots["wmdp"])
    assert row.stat == "acc" and row["dtype"] == "float32"
    assert row.max_items is None or math.isnan(row.max_items)


def test_max_items_and_fewshot_mmlu_subjects(tmp_path, tiny_lm, data_dir, snapshots):
    """max_items cuts every leaf task to its first items; num_fewshot takes MMLU's first dev
    examples, written before the question as lm-eval's mmlu tasks do."""
    folder, model, tok = tiny_lm
    from relapse.quantize.stage import quantize_model

    quantize_model(folder, tmp_path / "cell", "none", 16, {})
    metrics, samples = run_cell(tmp_path / "cell", tmp_path, data_dir,
                                {"tasks": ["wmdp_bio", "mmlu_anatomy"], "max_items": 3,
                                 "num_fewshot": 2,
                                 "snapshots": {"wmdp_bio": str(snapshots["wmdp"]),
                                               "mmlu_anatomy": str(snapshots["mmlu"])}})
    row = metrics[metrics.split == "mmlu_anatomy"].iloc[0]
    assert row.n == 3 and row.max_items == 3 and row.num_fewshot == 2
    dev, test = mcq("anatomy-dev", 5, "anatomy"), mcq("anatomy", 4, "anatomy").head(3)
    head = "The following are multiple choice questions (with answers) about anatomy.\n\n"

    def block(q, cs):
        return f"{q}\n" + "".join(f"{LETTERS[k]}. {c}\n" for k, c in enumerate(cs)) + "Answer:"

    shots = "".join(block(q, cs) + f" {LETTERS[a]}\n\n"
                    for q, cs, a in zip(dev.question[:2], dev.choices[:2], dev.answer[:2]))
    prompts = [head + shots + block(q, cs) for q, cs in zip(test.question, test.choices)]
    _, lls = direct_accuracy(model, tok, prompts, list(test.answer))
    assert_accuracy(row.value, lls, list(test.answer))
    assert metrics[metrics.split == "wmdp_bio"].iloc[0].n == 3


def test_quantized_and_adapter_cells_go_through_the_same_path(tmp_path, tiny_lm, data_dir,
                                                              snapshots):
    """The model lm-eval scores is the one the stage loads: RTN 4-bit weights, and a LoRA
    adapter kept in full precision over a quantized base (lora_merge: adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from relapse.quantize.runtime import load_quantized_model
    from relapse.quantize.stage import quantize_model

    folder, model, tok = tiny_lm
    lcfg = {"tasks": ["wmdp_bio"], "snapshots": {"wmdp_bio": str(snapshots["wmdp"])}}
    quantize_model(folder, tmp_path / "rtn", "rtn", 4, {"group_size": 16})
    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["up_proj", "q_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)        # an update large enough to move the choices
    run = tmp_path / "run"
    peft_model.save_pretrained(str(run / "adapter"))
    peft_model.merge_and_unload().save_pretrained(str(run))
    tok.save_pretrained(str(run))
    quantize_model(run, tmp_path / "adapter", "rtn", 4, {"group_size": 16}, lora_merge="adapter",
                   base_quant_dir=tmp_path / "rtn")
    values = {}
    for cell in ("rtn", "adapter"):
        loaded = load_quantized_model(tmp_path / cell)
        if cell == "adapter":
            assert type(loaded).__name__ == "PeftModel"
        keys = {**KEYS, "quant": "rtn-w4", "quant_scheme": "rtn", "bits": 4}
        out = tmp_path / f"out-{cell}"
        out.mkdir()
        metrics, samples = run_cell(tmp_path / cell, out, data_dir, lcfg, keys)
        values[cell] = check_wmdp(loaded, tok, metrics, samples)
        values[cell + " lls"] = np.array(list(samples.loglikelihoods))
    # the adapter changed what lm-eval saw (not the bare quantized base scored twice)
    assert not np.allclose(values["rtn lls"], values["adapter lls"])


def lm_eval_config(default_config, lcfg: dict) -> dict:
    cfg = copy.deepcopy(default_config)
    cfg["evaluation"]["metrics"] = ["knowmem", "lm_eval"]
    cfg["evaluation"]["lm_eval"] = lcfg
    return cfg


def test_validation_refuses_missing_snapshot_config_and_unknown_task(tmp_path, root, snapshots):
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    ok = lm_eval_config(raw, {"tasks": ["wmdp_bio", "mmlu_anatomy"],
                              "snapshots": {"wmdp_bio": str(snapshots["wmdp"]),
                                            "mmlu_anatomy": str(snapshots["mmlu"])}})
    assert validate(ok)["evaluation"]["lm_eval"]["max_items"] is None
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"snapshots\.wmdp_bio: '.*nowhere' is not a folder"):
        validate(lm_eval_config(raw, {"tasks": ["wmdp_bio"],
                                      "snapshots": {"wmdp_bio": str(missing)}}))
    # wmdp_chem reads config wmdp-chem, which this snapshot lacks: named, with what exists
    with pytest.raises(ConfigError, match=r"task wmdp_chem reads config 'wmdp-chem'.*configs "
                                          r"there: wmdp-bio, wmdp-cyber"):
        validate(lm_eval_config(raw, {"tasks": ["wmdp_chem"],
                                      "snapshots": {"wmdp_chem": str(snapshots["wmdp"])}}))
    # the whole mmlu group needs every subject; the snapshot has two
    with pytest.raises(ConfigError, match=r"snapshots\.mmlu: .*task mmlu_\w+ reads config "
                                          r"'\w+'.*configs there: anatomy, astronomy"):
        validate(lm_eval_config(raw, {"tasks": ["mmlu"],
                                      "snapshots": {"mmlu": str(snapshots["mmlu"])}}))
    with pytest.raises(ConfigError, match=r"'wmdp_bioo' is not a task.*close names: wmdp_bio"):
        validate(lm_eval_config(raw, {"tasks": ["wmdp_bioo"]}))
    with pytest.raises(ConfigError, match=r"snapshots: 'mmlu' not in evaluation.lm_eval.tasks"):
        validate(lm_eval_config(raw, {"tasks": ["wmdp_bio"],
                                      "snapshots": {"mmlu": str(snapshots["mmlu"])}}))
    # MMLU reads its dev split (lm-eval builds the few-shot set even at 0 shots): a snapshot
    # without it is refused
    nodev = write_snapshot(tmp_path / "nodev", {"anatomy": {"test": mcq("a", 3, "anatomy")}})
    for shots in (None, 5):
        with pytest.raises(ConfigError, match=r"task mmlu_anatomy: .*no split 'dev'.*splits "
                                              r"there: test"):
            validate(lm_eval_config(raw, {"tasks": ["mmlu_anatomy"], "num_fewshot": shots,
                                          "snapshots": {"mmlu_anatomy": str(nodev)}}))
    # a wmdp split without the column lm-eval's prompt reads
    bad = write_snapshot(tmp_path / "bad", {"wmdp-bio": {"test": mcq("b", 3).drop(
        columns="choices")}})
    with pytest.raises(ConfigError, match=r"no column\(s\) \['choices'\]"):
        validate(lm_eval_config(raw, {"tasks": ["wmdp_bio"],
                                      "snapshots": {"wmdp_bio": str(bad)}}))


def test_selection_can_floor_on_mmlu_and_minimize_wmdp():
    """The same grid picks differently with the utility floor on MMLU and the forget measure
    WMDP-Bio (RMU's tuning) than on KnowMem_r / KnowMem_f."""
    from relapse.report.selection import rule_text, select_hps

    cols = ["bench", "method", "hp", "quant", "KnowMem_f", "KnowMem_r", "MMLU", "WMDP_bio"]
    frame = pd.DataFrame([
        ("w", "target", "default", "none-w16", 90, 80, 58.0, 64.0),
        # KnowMem-wise best (KnowMem_r 79 >= 72, lowest KnowMem_f), but MMLU 50 < 90% of 58
        ("w", "rmu", "a", "none-w16", 10, 79, 50.0, 26.0),
        # MMLU 57.1 >= 52.2 and the lowest WMDP-Bio among those that keep it
        ("w", "rmu", "b", "none-w16", 60, 75, 57.1, 31.2),
        ("w", "rmu", "c", "none-w16", 40, 60, 57.9, 45.0),
    ], columns=cols)
    assert select_hps(frame, {"quant": "none-w16"}).hp.tolist() == ["a"]
    chosen = select_hps(frame, {"quant": "none-w16", "utility": "mmlu", "forget": "wmdp_bio"})
    row = chosen.iloc[0]
    assert row.hp == "b" and row.meets_floor and row.floor_MMLU == pytest.approx(0.9 * 58.0)
    assert row.WMDP_bio == 31.2 and row.MMLU == 57.1
    # utility alone: among MMLU-keeping hps, the lowest KnowMem_f
    assert select_hps(frame, {"quant": "none-w16", "utility": "mmlu"}).hp.tolist() == ["c"]
    assert "MMLU >= 90%" in rule_text({"utility": "mmlu", "forget": "wmdp_bio"})
    with pytest.raises(ValueError, match="report.selection.utility: 'mmlu' selects on MMLU"):
        select_hps(frame.drop(columns="MMLU"), {"quant": "none-w16", "utility": "mmlu"})


def test_report_shows_and_retains_lm_eval_measures():
    """WMDP and MMLU rows become wide-frame columns, the main tables' measures, and knowledge
    retained at matched quant (unlearned / target at the same quant)."""
    from relapse.report.measures import main_measures, wide

    rows = []
    for method, hp, quant, wmdp, mmlu in [("target", "default", "none-w16", 64.0, 58.0),
                                          ("target", "default", "rtn-w4", 60.0, 55.0),
                                          ("rmu", "x", "none-w16", 32.0, 57.0),
                                          ("rmu", "x", "rtn-w4", 45.0, 54.0)]:
        keys = {"bench": "w", "method": method, "hp": hp, "quant": quant, "seed": 0}
        rows += [{**keys, "metric": "lm_eval", "split": "wmdp_bio", "stat": "acc", "value": wmdp},
                 {**keys, "metric": "lm_eval", "split": "mmlu", "stat": "acc", "value": mmlu},
                 {**keys, "metric": "knowmem", "split": "forget", "stat": "rougeL_f1",
                  "value": 1.0}]
    metrics = pd.DataFrame(rows)
    assert [m.name for m in main_measures(metrics)][-2:] == ["WMDP_bio", "MMLU"]
    frame = wide(metrics, ["lm_eval_wmdp_bio", "lm_eval_mmlu"]).set_index(["method", "quant"])
    from relapse.report.captions import main_caption

    caption = main_caption({"evaluation": {"metrics": ["lm_eval"],
                                           "lm_eval": {"max_items": 500}}})
    assert "WMDP (lower is better" in caption and "the first 500 items of each task" in caption
    assert "WMDP" not in main_caption({"evaluation": {"metrics": ["knowmem"]}})
    assert frame.loc[("rmu", "rtn-w4"), "retained WMDP_bio"] == pytest.approx(45.0 / 60.0)
    assert frame.loc[("rmu", "none-w16"), "retained MMLU"] == pytest.approx(57.0 / 58.0)
    assert frame.loc[("target", "rtn-w4"), "WMDP_bio"] == 60.0


def test_selection_on_a_task_not_evaluated_is_refused(root):
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    raw.setdefault("report", {})["selection"] = {"utility": "mmlu"}
    with pytest.raises(ConfigError, match=r"report.selection.utility: 'mmlu' .*metric lm_eval "
                                          r"not in evaluation.metrics"):
        validate(raw)


def wmdp_corpora(root, subset="cyber", n=9):
    """cais/wmdp-corpora-shaped: {subset}-forget-corpus (cyber only) and {subset}-retain-corpus,
    split train, column text (plus the others the hub's files carry)."""
    def texts(prefix):
        return pd.DataFrame({"title": [f"{prefix} {i}" for i in range(n)],
                             "text": [" ".join(f"{prefix}{i}w{j}" for j in range(60))
                                      for i in range(n)]})
    configs = {f"{subset}-retain-corpus": {"train": texts("r")}}
    if subset == "cyber":
        configs["cyber-forget-corpus"] = {"train": texts("f")}
    return write_snapshot(root, configs)


def test_wmdp_corpus_kind_on_a_made_up_snapshot(tmp_path, tiny_lm):
    """Forget and retain are the first `samples` texts, each cut to its first max_length tokens;
    holdout and retain_eval the next `eval_texts`; bio reads its forget texts from the gated
    repository's snapshot (forget_source)."""
    from relapse.data.corpora import get_corpus
    from relapse.data.corpora.hub import CorpusError

    _, _, tok = tiny_lm
    kind = get_corpus("wmdp")
    src = wmdp_corpora(tmp_path / "corpora")
    cfg = {"kind": "wmdp", "subset": "cyber", "source": str(src), "samples": 5, "eval_texts": 3,
           "max_length": 16}
    kind.check(cfg)
    splits, record = kind.build(cfg, tok)
    assert {k: len(v) for k, v in splits.items()} == {
        "forget": 5, "retain": 5, "holdout": 3, "retain_eval": 3, "privleak_forget": 3,
        "privleak_holdout": 3}
    assert splits["forget"].text[0].startswith("f0w0 f0w1") and "f5w0" in splits["holdout"].text[0]
    assert splits["retain_eval"].text[0].startswith("r5w0")
    assert all(len(tok(t).input_ids) <= 16 for t in splits["forget"].text)
    assert len(tok(splits["forget"].text[0]).input_ids) >= 15     # cut at max_length, not before
    assert record["subset"] == "cyber" and record["forget_source"] == str(src)
    with pytest.raises(CorpusError, match="has 9 texts; samples 8 \\+ eval_texts 3"):
        kind.build({**cfg, "samples": 8}, tok)
    # bio: retain from wmdp-corpora, forget from the (gated) forget repository's snapshot
    bio = wmdp_corpora(tmp_path / "bio", "bio")
    forget = write_snapshot(tmp_path / "bio-forget", {"default": {"train": pd.DataFrame(
        {"text": [f"hazard text {i} " * 20 for i in range(9)]})}}, folders={"default": "data"})
    bio_cfg = {**cfg, "subset": "bio", "source": str(bio), "forget_source": str(forget)}
    splits, _ = kind.build(bio_cfg, tok)
    assert splits["forget"].text[1].startswith("hazard text 1")
    assert splits["retain"].text[0].startswith("r0w0")
    # the cyber snapshot has no bio retain corpus: refused at validation, naming what exists
    with pytest.raises(CorpusError, match=r"no config 'bio-retain-corpus'; configs there: "
                                          r"cyber-retain-corpus, cyber-forget-corpus"):
        kind.check({**bio_cfg, "source": str(src)})


def test_wmdp_config_plans(tmp_path):
    """config/wmdp.yaml (RMU on Zephyr-7B) validates and plans with no data and no model."""
    from test_paper_configs import QUANTS, planned

    counts = planned(tmp_path, "wmdp.yaml")
    cells = (1 + 2) * QUANTS                    # rmu's one hp, target and retrain
    want = {"check_corpus": 1, "fetch_pretrained": 2, "prepare_corpus": 1, "unlearn": 1,
            "quantize": cells, "evaluate": cells, "report": 1}
    assert {k: counts.get(k, 0) for k in want} == want


def test_benchmarks_page_quotes_lm_eval_cost(root):
    import json

    cost = json.loads((root / "benchmarks" / "lm_eval_cost.json").read_text())
    row = [line for line in (root / "docs" / "benchmarks.md").read_text().splitlines()
           if line.startswith("| `lm_eval_cost.py` |")]
    assert len(row) == 1
    assert (f"{cost['warm_cell_s']:g} s per cell ({cost['ms_per_item_warm']:g} ms per item); "
            f"{cost['first_cell_s']:g} s in a fresh evaluate job") in row[0]
    assert f"{cost['per_job_overhead_vs_default_evaluate']:g}× the default's" in row[0]
    # the default config runs no lm_eval
    default = yaml.safe_load((root / "config" / "config.yaml").read_text())
    assert "lm_eval" not in default.get("evaluation", {}).get("metrics", [])


def test_mmlu_group_is_the_item_mean_over_its_subjects(tmp_path, tiny_lm, data_dir):
    """Task `mmlu` (lm-eval's group of 57 subjects, through its 4 category subgroups) on a
    snapshot with every subject: the group's row is the accuracy over all items (lm-eval
    weights subjects by size), equal to the direct computation; each subject has its own row;
    the per-item samples are the group's."""
    from relapse.evaluate.lmeval_tasks import leaves
    from relapse.quantize.stage import quantize_model

    folder, model, tok = tiny_lm
    subjects = {cfg["dataset_name"]: cfg for _, cfg in leaves("mmlu")}
    assert len(subjects) == 57
    frames = {s: mcq(s, 1 + i % 2, s) for i, s in enumerate(sorted(subjects))}
    # every subject with its dev split: lm-eval reads it when it builds the task, even at 0 shots
    snap = write_snapshot(tmp_path / "mmlu", {s: {"test": f, "dev": mcq(s + "-dev", 1, s)}
                                              for s, f in frames.items()})
    quantize_model(folder, tmp_path / "cell", "none", 16, {})
    metrics, samples = run_cell(tmp_path / "cell", tmp_path, data_dir,
                                {"tasks": ["mmlu"], "snapshots": {"mmlu": str(snap)}})
    prompts, answers = [], []
    for s, f in frames.items():
        prompts += [subjects[s]["description"] + f"{q}\n" + "".join(
            f"{LETTERS[k]}. {c}\n" for k, c in enumerate(cs)) + "Answer:"
            for q, cs in zip(f.question, f.choices)]
        answers += list(f.answer)
    _, lls = direct_accuracy(model, tok, prompts, answers)
    rows = metrics[metrics.metric == "lm_eval"].set_index("split")
    assert_accuracy(rows.loc["mmlu", "value"], lls, answers)
    assert rows.loc["mmlu", "n"] == len(answers) == 85        # 29 subjects x 1 + 28 x 2
    assert {"mmlu_stem", "mmlu_humanities", "mmlu_anatomy"} <= set(rows.index)
    assert (rows.task == "mmlu").all()
    assert rows.loc["mmlu_anatomy", "n"] == len(frames["anatomy"])
    assert set(samples.split) == {"mmlu"} and len(samples) == 85


def test_retained_wmdp_has_a_paired_item_interval():
    """The per-item correctness in samples.parquet (metric lm_eval, column acc) gives WMDP's
    knowledge retained its paired bootstrap interval, around the ratio of the two accuracies."""
    from relapse.report.measures import wide

    rng = np.random.default_rng(0)
    target, unlearned = rng.random(200) < 0.64, rng.random(200) < 0.32
    rows, samples = [], []
    for method, hp, correct in (("target", "default", target), ("rmu", "x", unlearned)):
        keys = {"bench": "w", "method": method, "hp": hp, "quant": "rtn-w4", "seed": 0}
        rows.append({**keys, "metric": "lm_eval", "split": "wmdp_bio", "stat": "acc",
                     "value": 100 * correct.mean()})
        samples += [{**keys, "metric": "lm_eval", "split": "wmdp_bio", "item": i,
                     "acc": float(c)} for i, c in enumerate(correct)]
    frame = wide(pd.DataFrame(rows), ["lm_eval_wmdp_bio"], pd.DataFrame(samples),
                 {"samples": 200, "seed": 0}).set_index("method")
    ratio = unlearned.mean() / target.mean()
    lo, hi = frame.loc["rmu", "retained WMDP_bio lo"], frame.loc["rmu", "retained WMDP_bio hi"]
    assert frame.loc["rmu", "retained WMDP_bio"] == pytest.approx(ratio)
    assert lo < ratio < hi and hi - lo < 1
    low, high = frame.loc["rmu", "WMDP_bio lo"], frame.loc["rmu", "WMDP_bio hi"]
    assert low < 100 * unlearned.mean() < high
