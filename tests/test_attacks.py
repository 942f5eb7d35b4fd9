"""Attacks: the registry, magnitude pruning (against a numpy reference), relearning (k = 0 is
the cell exactly; forget data teaches the forget set more than unrelated data) and QLoRA over
frozen quantized weights (bit-identical)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from relapse.attacks.registry import ATTACK_COLUMNS, attack_names, get_attack
from relapse.attacks.stage import run_attack

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The data stage's folder (every split, and the relearning split in its manifest)."""
    from relapse.data.prepare import prepare

    folder = tmp_path_factory.mktemp("data") / "data"
    prepare("b", {"kind": "synthetic", "people": 20, "seed": 0}, folder)
    return folder


@pytest.fixture(scope="module")
def in_sample_dir(tmp_path_factory):
    """The same corpus with nothing held out (attacks.relearn.heldout: 0): relearning draws from
    every forget person, as MUSE's protocol does."""
    from relapse.data.prepare import prepare

    folder = tmp_path_factory.mktemp("data") / "data"
    prepare("b", {"kind": "synthetic", "people": 20, "seed": 0}, folder, heldout=0)
    return folder


@pytest.fixture(scope="module")
def rtn_cell(tiny_lm, tmp_path_factory):
    """The tiny model quantized by RTN 4-bit: a quantized cell's model folder."""
    from relapse.quantize.stage import quantize_model

    folder = tmp_path_factory.mktemp("cell") / "rtn-w4"
    quantize_model(tiny_lm[0], folder, "rtn", 4, {"group_size": 16, "symmetric": False})
    return folder


def test_registry_lists_every_attack(capsys):
    from relapse.cli import main

    assert attack_names() == ["prune", "relearn"]
    assert main(["list", "attacks"]) == 0
    assert capsys.readouterr().out.split() == ["prune", "relearn"]
    variants = get_attack("relearn").variants({"steps": [5, 0], "data": ["forget", "holdout"]})
    assert list(variants) == ["forget-k0", "forget-k5", "holdout-k0", "holdout-k5"]
    assert variants["holdout-k5"] == {"attack": "relearn", "attack_data": "holdout",
                                      "attack_steps": 5, "sparsity": None}
    prune = get_attack("prune").variants({"sparsity": [0.25]})
    assert set(prune["s0.25"]) == set(ATTACK_COLUMNS) and prune["s0.25"]["sparsity"] == 0.25


def _numpy_prune_rows(w, s):
    out = w.copy()
    k = int(np.floor(s * w.shape[1]))
    for r in range(w.shape[0]):
        out[r, np.argsort(np.abs(w[r]), kind="stable")[:k]] = 0.0
    return out


def test_prune_weight_matches_numpy():
    from relapse.attacks.kinds.prune import prune_weight

    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    for s in (0.0, 0.3, 0.5, 1.0):
        np.testing.assert_array_equal(prune_weight(w, s).numpy(), _numpy_prune_rows(w.numpy(), s))
    m = prune_weight(w, 0.5, scope="matrix")
    assert int((m == 0).sum()) == 30
    assert float(m.abs().masked_select(m != 0).min()) >= float(w.abs().flatten().sort().values[29])
    with pytest.raises(ValueError):
        prune_weight(w, 1.5)


def test_prune_attack_at_zero_changes_nothing(tiny_lm, data_dir, tmp_path):
    folder = tiny_lm[0]
    run_attack("prune", folder, tmp_path / "prune", data_dir, {"sparsity": [0.0, 0.5]})
    source = load_file(folder / "model.safetensors")
    zero = load_file(tmp_path / "prune" / "s0" / "model.safetensors")
    half = load_file(tmp_path / "prune" / "s0.5" / "model.safetensors")
    assert source.keys() == zero.keys()
    for name in source:
        assert torch.equal(source[name], zero[name]), name
        if name.endswith("proj.weight") and ".layers." in name:
            np.testing.assert_array_equal(half[name].numpy(),
                                          _numpy_prune_rows(source[name].numpy(), 0.5))
        else:
            assert torch.equal(source[name], half[name]), name   # embeddings, norms, lm_head
    keys = json.loads((tmp_path / "prune" / "s0.5" / "attack_manifest.json").read_text())["keys"]
    assert keys["attack"] == "prune" and keys["sparsity"] == 0.5


def _logits(folder, text, tok):
    from relapse.quantize.runtime import load_quantized_model

    model = load_quantized_model(folder)
    with torch.no_grad():
        return model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits


@pytest.mark.parametrize("params", ["full", "lora"])
def test_relearn_zero_steps_is_the_cell_exactly(tiny_lm, data_dir, tmp_path, params):
    folder, _, tok = tiny_lm
    out = tmp_path / "relearn"
    run_attack("relearn", folder, out, data_dir,
               {"steps": [0, 2], "data": ["forget"], "params": params, "samples": 4,
                "batch_size": 2, "lr": 1e-2}, lora=LORA)
    text = "Greer Galloway is a native of Ashgrove."
    before = _logits(folder, text, tok)
    assert torch.equal(_logits(out / "forget-k0", text, tok), before)
    assert not torch.allclose(_logits(out / "forget-k2", text, tok), before)
    log = pd.read_parquet(out / "relearn_log.parquet")
    assert list(log.step) == [1, 2]


def test_relearned_rows_say_recovery_and_knowmem_scores_the_heldout_people(qa_lm, data_dir,
                                                                            tmp_path):
    """A relearned variant's keys carry `recovery` from the data stage; KnowMem's forget_heldout
    rows are its forget items of the held-out people (pid in knowmem_forget_heldout_qa), the
    same per-item scores, so their mean is the mean over those items."""
    from relapse.evaluate.metrics.knowmem import knowmem
    from relapse.evaluate.stage import EvalContext

    model, tok = qa_lm
    folder = _saved_cell(model, tok, tmp_path / "cell")
    out = tmp_path / "relearn"
    run_attack("relearn", folder, out, data_dir, {"steps": [0], "data": ["forget"]})
    keys = json.loads((out / "forget-k0" / "attack_manifest.json").read_text())["keys"]
    assert keys["recovery"] == "held-out"

    ctx = EvalContext(model, tok, data_dir, {"knowmem": {"shots": 3, "max_new_tokens": 8}}, 16)
    got = {(r.metric, r.split): r for r in knowmem(ctx)}
    forget, held = got[("knowmem", "forget")], got[("knowmem", "forget_heldout")]
    pids = set(pd.read_parquet(data_dir / "knowmem_forget_heldout_qa.parquet").pid)
    assert len(pids) == 1 and len(held.scores) == 6       # 2 forget people, one held out
    mine = [f for f, s in zip(forget.scores, forget.samples) if s["pid"] in pids]
    assert held.scores == mine and {s["pid"] for s in held.samples} == pids
    em = [e for e, s in zip(got[("qa_em", "forget")].scores, forget.samples) if s["pid"] in pids]
    assert got[("qa_em", "forget_heldout")].scores == em


def _forget_nll(folder, texts, tok):
    from relapse.models.batching import encode
    from relapse.quantize.runtime import load_quantized_model

    model = load_quantized_model(folder)
    batch = encode(tok, texts, eos=True)
    with torch.no_grad():
        return float(model(**batch).loss)


def test_relearning_on_forget_teaches_more_than_unrelated_data(tiny_lm, data_dir, tmp_path):
    from relapse.attacks.kinds.relearn import attack_texts

    folder, _, tok = tiny_lm
    out = tmp_path / "relearn"
    settings = {"steps": [0, 15], "data": ["forget", "holdout"], "params": "full", "samples": 4,
                "batch_size": 4, "lr": 3e-3}
    run_attack("relearn", folder, out, data_dir, settings)
    texts = attack_texts(data_dir, "forget", 4, 0)
    base = _forget_nll(out / "forget-k0", texts, tok)
    on_forget = base - _forget_nll(out / "forget-k15", texts, tok)
    on_holdout = base - _forget_nll(out / "holdout-k15", texts, tok)
    assert on_forget > 0 and on_forget > 2 * on_holdout


def _knowmem_forget(folder, data_dir, tok):
    """KnowMem_f (ROUGE-L F1 x100, the evaluate package's metric, greedy, 3 shots)."""
    from relapse.evaluate.metrics.knowmem import knowmem
    from relapse.evaluate.stage import EvalContext
    from relapse.models.io import load_model

    ctx = EvalContext(load_model(folder).eval(), tok, data_dir,
                      {"knowmem": {"shots": 3, "max_new_tokens": 16}}, 16)
    (forget,) = [r for r in knowmem(ctx) if r.metric == "knowmem" and r.split == "forget"]
    return 100 * float(np.mean(forget.scores))


def _saved_cell(model, tok, folder):
    """`model` and its tokenizer written as a cell folder."""
    from relapse.models.io import save_model

    folder.mkdir()
    tok.save_pretrained(str(folder))
    save_model(model, folder)
    return folder


def _answer_nll(folder, data_dir, tok):
    """Per forget QA item, the mean negative log-likelihood of the answer's tokens after
    `Question: q\nAnswer: ` (teacher-forced, float64 log-softmax): a continuous measure of the
    facts that greedy KnowMem scores only once they win the argmax."""
    from relapse.models.io import load_model

    model = load_model(folder).eval()
    qa = pd.read_parquet(data_dir / "knowmem_forget_qa.parquet")
    out = []
    for question, answer in zip(qa.question, qa.answer):
        prompt = len(tok(f"Question: {question}\nAnswer: ").input_ids)
        ids = torch.tensor([tok(f"Question: {question}\nAnswer: {answer}").input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        target = ids[0, 1:]
        out.append(-float(logp[torch.arange(len(target)), target][prompt - 1:].mean()))
    return np.array(out)


def test_relearning_on_forget_raises_knowmem_f_more_than_unrelated_data(qa_lm, in_sample_dir,
                                                                         tmp_path):
    """The issue's check, against its control in the same run: the tiny model that knows the
    QA format (qa_lm) but not the forget people's facts, relearned k steps on the forget texts
    (their biographies and QA blocks) vs on holdout documents of the same form (the control);
    in-sample (in_sample_dir: the relearning sees every forget person). This model is too
    small for greedy KnowMem_f to rise by a margin that holds on every CPU (measured: one item
    of 12 on an AMD EPYC, 3.7 points), so the forget facts' answer likelihood carries the test:
    item by item, relearning on forget must lower it more than the control does, at one-sided
    p < 0.01 (paired t-test over the 12 items; measured here t = 4.5, p < 0.001)."""
    from scipy.stats import ttest_rel

    data_dir = in_sample_dir
    model, tok = qa_lm
    folder = _saved_cell(model, tok, tmp_path / "cell")
    out = tmp_path / "relearn"
    run_attack("relearn", folder, out, data_dir,
               {"steps": [0, 100], "data": ["forget", "holdout"], "params": "full",
                "samples": 4, "batch_size": 4, "lr": 3e-3})
    on_forget = _answer_nll(out / "forget-k100", data_dir, tok)
    on_holdout = _answer_nll(out / "holdout-k100", data_dir, tok)
    assert len(on_forget) == 12
    test = ttest_rel(on_holdout, on_forget, alternative="greater")
    assert test.pvalue < 0.01, (test, on_forget, on_holdout)
    # KnowMem_f itself: the control teaches the forget facts no better than the forget data
    base = _knowmem_forget(out / "forget-k0", data_dir, tok)
    assert _knowmem_forget(out / "forget-k100", data_dir, tok) - base >= \
        _knowmem_forget(out / "holdout-k100", data_dir, tok) - base


def test_qlora_leaves_the_quantized_weights_bit_identical(rtn_cell, data_dir, tmp_path, tiny_lm):
    from relapse.quantize.runtime import load_quantized_model

    out = tmp_path / "relearn"
    source_manifest = (rtn_cell / "quant_manifest.json").read_bytes()
    # params: full is asked for, but a quantized cell is attacked with a LoRA (QLoRA).
    run_attack("relearn", rtn_cell, out, data_dir,
               {"steps": [3], "data": ["forget"], "params": "full", "samples": 4,
                "batch_size": 2, "lr": 1e-2}, lora=LORA)
    cell = out / "forget-k3"
    assert (cell / "adapter").is_dir()
    from relapse.models.codes import decode_tensors

    source = decode_tensors(rtn_cell)         # the quantized cell's weights, decoded
    saved = decode_tensors(cell)
    assert all(torch.equal(source[k], saved[k]) for k in source)
    manifest = json.loads((cell / "quant_manifest.json").read_text())
    assert manifest["scheme"] == "rtn" and manifest["lora_merge"] == "adapter"
    # The source cell's own manifest is untouched (the base files are hard links).
    assert (rtn_cell / "quant_manifest.json").read_bytes() == source_manifest
    model = load_quantized_model(cell)
    bases = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
             for n, p in model.named_parameters() if "lora_" not in n}
    shared = [k for k in source if k in bases]
    assert len(shared) == len(source)
    assert all(torch.equal(bases[k], source[k]) for k in shared)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().max()) > 0 for p in trained)
    # Scored at the cell's precision: the adapter changes the quantized model's outputs.
    tok = tiny_lm[2]
    text = "Greer Galloway"
    assert not torch.allclose(_logits(cell, text, tok), _logits(rtn_cell, text, tok))


def test_represent_of_an_attacked_qlora_folder(rtn_cell, data_dir, tmp_path):
    """attacks.represent.attacked: the CLI the rule runs on a relearned QLoRA folder. Its rows
    carry the attack's keys; at k = 0 (a zero adapter) it is the cell itself, so every
    similarity with the cell is exact and the Fisher, taken over the base weights under the
    adapter (never the LoRA factors), equals the cell's entry for entry."""
    from relapse.cli import main

    models = tmp_path / "relearn"
    run_attack("relearn", rtn_cell, models, data_dir,
               {"steps": [0, 3], "data": ["forget"], "params": "full", "samples": 4,
                "batch_size": 2, "lr": 1e-2}, lora=LORA)
    frames = {}
    for variant in ("forget-k0", "forget-k3"):
        out = tmp_path / variant / "repr.parquet"
        s = json.dumps({"represent": {"samples": 8, "fisher_samples": 3, "components": 2},
                        "device": "cpu"})
        assert main(["represent", "--settings", s, "--bench", "b", "--method", "npo", "--hp",
                     "params=full", "--seed", "0", "--quant", "rtn-w4", "--model",
                     str(models / variant), "--target", str(rtn_cell), "--retrain",
                     str(rtn_cell), "--data", str(data_dir), "--out", str(out)]) == 0
        frames[variant] = pd.read_parquet(out)
    k0, k3 = frames["forget-k0"], frames["forget-k3"]
    for frame, steps in ((k0, 0), (k3, 3)):
        assert set(frame.attack) == {"relearn"} and set(frame.attack_data) == {"forget"}
        assert set(frame.attack_steps) == {steps} and set(frame.quant) == {"rtn-w4"}
    vs = k0[k0.reference == "target"].pivot_table(index=["split", "layer"], columns="measure",
                                                  values="value")
    np.testing.assert_allclose(vs.cka, 1.0, atol=1e-9)
    np.testing.assert_allclose(vs.pca_shift, 0.0, atol=1e-9)
    assert vs.fisher_log_ratio.notna().sum() == 2            # forget texts, per layer
    np.testing.assert_allclose(vs.fisher_log_ratio.dropna(), 0.0, atol=1e-9)
    moved = k3[(k3.reference == "target") & (k3.measure == "fisher_log_ratio")].value
    assert (moved.abs() > 1e-6).any()        # the trained adapter changes the gradients


# --- the slice, the tables, the label -----------------------------------------------------------

def test_attack_slice_follows_the_config(default_config):
    from relapse.attacks import plan

    cfg = json.loads(json.dumps(default_config))
    cfg["attacks"].update(benchmarks=["synthbio"], baselines=["retrain"],
                          quants=["none-w16", "rtn-w4"], hps={"params": "full", "lr": 3e-4})
    models = plan.attacked_models(cfg)
    assert ("synthbio", "retrain", "default", 0) in models
    assert all(m[0] == "synthbio" and m[1] != "target" for m in models)
    unlearned = [m for m in models if m[1] != "retrain"]
    assert unlearned and all("lr=0.0003" in m[2] and "params=full" in m[2] for m in unlearned)
    cells = plan.attack_cells(cfg)
    per_model = len(cfg["attacks"]["relearn"]["data"]) * len(cfg["attacks"]["relearn"]["steps"]) \
        + len(cfg["attacks"]["prune"]["sparsity"])
    # ... and the target pruned at each quant: pruning divides by it (matched)
    pruned_target = len(cfg["attacks"]["prune"]["sparsity"]) * 2
    assert len(cells) == len(models) * 2 * per_model + pruned_target
    cfg["attacks"]["quants"] = ["gptq-w4"]
    with pytest.raises(ValueError, match="attacks.quants: gptq-w4"):
        plan.check(cfg)


def test_attack_slice_of_several_hp_points_and_represent_of_attacked_folders(default_config):
    """`hps` as a list of points: the union of their matches (here the hp the report selects
    on the default run and the strongest); `represent.attacked` adds one repr.parquet per
    attacked folder of each unlearned model at each represented quant that is attacked."""
    from relapse.attacks import plan

    cfg = json.loads(json.dumps(default_config))
    cfg["attacks"].update(hps=[{"params": "full", "lr": 1e-4, "epochs": 10},
                               {"params": "full", "lr": 3e-4, "epochs": 20}],
                          quants=["none-w16", "rtn-w4"])
    unlearned = sorted(m[2] for m in plan.attacked_models(cfg) if m[1] != "retrain")
    assert unlearned == ["alpha=5_beta=0.1_epochs=10_lr=0.0001_params=full",
                         "alpha=5_beta=0.1_epochs=20_lr=0.0003_params=full"]
    assert plan.in_slice("params=lora_lr=0.003_epochs=10", {})
    assert not plan.in_slice("epochs=10_lr=0.0003_params=full", cfg["attacks"]["hps"])
    assert not plan.in_slice("epochs=10_lr=0.0001_params=full", [])

    cfg["attacks"]["represent"] = {"enabled": True, "quants": ["none-w16", "rtn-w8"]}
    plain = plan.represent_files(cfg)
    assert len(plain) == 2 * 2 and all(p.endswith("-w16/repr.parquet") or
                                       p.endswith("-w8/repr.parquet") for p in plain)
    cfg["attacks"]["represent"]["attacked"] = True
    attacked = sorted(set(plan.represent_files(cfg)) - set(plain))
    # 2 models x none-w16 (rtn-w8 is not attacked) x (forget-k20, holdout-k20, s0.5)
    assert len(attacked) == 2 * 3
    assert all("/none-w16/" in p and "/retrain/" not in p for p in attacked)
    assert any(p.endswith("/none-w16/relearn/holdout-k20/repr.parquet") for p in attacked)
    assert any(p.endswith("/none-w16/prune/s0.5/repr.parquet") for p in attacked)
    plan.check(cfg)
    cfg["attacks"]["represent"]["quants"] = ["rtn-w8"]
    with pytest.raises(ValueError, match="represent.attacked: none of"):
        plan.check(cfg)


def test_dry_run_plans_represent_on_attacked_folders(tmp_path):
    """The workflow plans `represent_attack` where the config asks, against the un-attacked
    references at the same quant, and its commands parse with the CLI."""
    import shlex

    import yaml

    from relapse.cli import build_parser
    from test_workflow import ROOT, planned_jobs, snakemake

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["attacks"]["represent"] = {"quants": ["none-w16", "rtn-w4"], "attacked": True}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(config))
    counts = planned_jobs(proc)
    # 2 unlearned models x 2 quants x (relearn forget-k20, holdout-k20, prune s0.5)
    assert counts["represent_attack"] == 12 and counts["represent"] == 4
    commands = [shlex.split(line.split("relapse ", 1)[1].split(" > ", 1)[0])
                for line in proc.stdout.splitlines() if "relapse represent " in line]
    attacked = [build_parser().parse_args(c) for c in commands
                if "/models/" in c[c.index("--model") + 1]]
    assert len(attacked) == 12
    for args in attacked:
        assert args.out == args.model.replace("/models/", "/") + "/repr.parquet"
        assert args.target.endswith(f"/target/default/s0/{args.quant}/model")
        assert args.retrain.endswith(f"/retrain/default/s0/{args.quant}/model")
        assert f"/{args.quant}/" in args.model


def _row(method, quant, value, attack="none", data=None, steps=None, sparsity=None, hp="h"):
    return {"bench": "b", "method": method, "hp": "default" if method in ("target", "retrain")
            else hp, "seed": 0, "quant": quant, "metric": "knowmem", "split": "forget",
            "stat": "rougeL_f1", "value": value, "ci_low": value - 2, "ci_high": value + 2,
            "attack": attack, "attack_data": data, "attack_steps": steps, "sparsity": sparsity}


def test_durability_table_side_by_side():
    from relapse.report.durability import durability_table, to_markdown

    metrics = pd.DataFrame([_row("target", "none-w16", 80), _row("target", "rtn-w4", 70),
                            _row("target", "bnb-w4", 50), _row("npo", "none-w16", 10),
                            _row("npo", "rtn-w4", 35), _row("npo", "bnb-w4", 20)])
    attacks = pd.DataFrame([_row("npo", "none-w16", 10),
                            _row("npo", "none-w16", 60, "relearn", "forget", 20),
                            _row("npo", "none-w16", 15, "relearn", "holdout", 20),
                            _row("npo", "none-w16", 30, "relearn", "forget", 5),
                            _row("npo", "none-w16", 12, "relearn", "holdout", 5),
                            _row("npo", "none-w16", 8, "prune", "none", None, 0.5),
                            _row("retrain", "none-w16", 40, "relearn", "forget", 20)])
    selection = pd.DataFrame({"bench": ["b"], "method": ["npo"], "hp": ["h"]})
    table = durability_table(attacks, metrics, selection)
    assert len(table) == 1
    r = table.iloc[0]
    # the verdict needs per-item scores (test_report_verdict.py); these rows have none
    assert r.selected and r.label == "undetermined"
    assert r.full == pytest.approx(10 / 80)
    assert r.worst_4bit_quant == "rtn-w4" and r.worst_4bit == pytest.approx(35 / 70)
    assert r.relearn_k20 == pytest.approx(60 / 80) and r.control_k20 == pytest.approx(15 / 80)
    # no pruned target in these rows: the matched ratio is missing, the un-pruned one is not
    assert np.isnan(r["prune_s0.5"]) and r["prune_s0.5_vs_unpruned"] == pytest.approx(8 / 80)
    assert r.relearn_k20_ci_low == pytest.approx(58 / 80)
    assert r.retrain_relearn == pytest.approx(40 / 80)
    text = to_markdown(table)
    assert "undetermined" in text and "75.0 [72.5, 77.5]" in text
    # at k = 5: the k = 5 runs
    assert durability_table(attacks, metrics, selection, {"steps": 5}).iloc[0].relearn_k5 == \
        pytest.approx(30 / 80)


def test_durability_reports_heldout_recovery_beside_in_sample(tmp_path):
    """The relearning columns again on split forget_heldout (the forget people the attacker never
    saw), each against the target's KnowMem on them; `recovery` from the relearned rows, and a
    MUSE-like run (nothing held out) says in-sample."""
    from relapse.report.durability import write_durability

    def held(row, value):
        return {**row, "split": "forget_heldout", "value": value, "ci_low": value - 2,
                "ci_high": value + 2}

    metrics = [_row("target", "none-w16", 80), _row("npo", "none-w16", 10)]
    metrics += [held(metrics[0], 64), held(metrics[1], 8)]
    attacks = [_row("npo", "none-w16", 10), _row("npo", "none-w16", 60, "relearn", "forget", 20),
               _row("npo", "none-w16", 15, "relearn", "holdout", 20)]
    attacks += [held(attacks[0], 8), held(attacks[1], 16), held(attacks[2], 9)]
    attacks = [{**r, "recovery": "held-out" if r["attack"] == "relearn" else None}
               for r in attacks]
    paths = {}
    for name, rows in (("metrics", metrics), ("attacks", attacks)):
        paths[name] = tmp_path / f"{name}.parquet"
        pd.DataFrame(rows).to_parquet(paths[name])
    table = write_durability(paths["attacks"], paths["metrics"], None, tmp_path / "d",
                             tmp_path / "labels.csv")
    r = table.iloc[0]
    assert r.relearn_facts == "held-out"
    assert r.relearn_k20 == pytest.approx(60 / 80)            # in-sample, as before
    assert r.target_heldout == pytest.approx(64)
    assert r.full_heldout == pytest.approx(8 / 64)
    assert r.relearn_k20_heldout == pytest.approx(16 / 64)
    assert r.relearn_k20_heldout_ci_low == pytest.approx(14 / 64)
    assert r.control_k20_heldout == pytest.approx(9 / 64)
    # no per-item scores were given: the held-out verdict, like the in-sample one, needs them
    assert r.label_heldout == "undetermined" and r.label == "undetermined"
    text = (tmp_path / "d.md").read_text()
    assert "Recovery: b held-out" in text and "25.0 [21.9, 28.1]" in text
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert labels.relearn_k20_heldout[0] == pytest.approx(0.25)

    in_sample = [{**r, "recovery": "in-sample" if r["attack"] == "relearn" else None}
                 for r in attacks if r["split"] == "forget"]
    pd.DataFrame(in_sample).to_parquet(paths["attacks"])
    pd.DataFrame(metrics[:2]).to_parquet(paths["metrics"])
    table = write_durability(paths["attacks"], paths["metrics"], None, tmp_path / "d",
                             tmp_path / "labels.csv")
    assert table.iloc[0].relearn_facts == "in-sample" and "relearn_k20_heldout" not in table
    assert "Recovery: b in-sample." in (tmp_path / "d.md").read_text()


def test_collect_and_curves(tmp_path):
    from relapse.attacks.tables import collect, relearn_curves

    base = pd.DataFrame([_row("npo", "none-w16", 10)]).drop(
        columns=["attack", "attack_data", "attack_steps", "sparsity"])
    base.to_parquet(tmp_path / "base.parquet")
    pd.DataFrame([_row("npo", "none-w16", 60, "relearn", "forget", 20),
                  _row("npo", "none-w16", 15, "relearn", "holdout", 20)]).to_parquet(
        tmp_path / "att.parquet")
    table = collect([tmp_path / "att.parquet"], [tmp_path / "base.parquet"])
    assert sorted(table.attack) == ["none", "relearn", "relearn"]
    curves = relearn_curves(table)
    assert list(curves.step) == [0, 20] and list(curves.value) == [10, 60]


@pytest.mark.slow
def test_attack_stages_end_to_end(qa_lm, default_config, tmp_path):
    """The CLI path the rules take, on the tiny model: unlearn (npo) and select, quantize,
    attack the unlearned cell (relearn with QLoRA on the 4-bit cell, prune), evaluate an
    attacked cell, collect, label (recomputed here from the tables by the documented rule),
    represent. The target has memorized the forget people's QA blocks, so that its KnowMem_f
    is above 0 and the label is decided by the values, not `undetermined` for want of them."""
    import copy

    from relapse.cli import main
    from relapse.data.prepare import prepare
    from relapse.models.batching import pack
    from relapse.models.io import save_model
    from relapse.quantize.stage import quantize_model

    data = tmp_path / "data"
    prepare("b", {"kind": "synthetic", "people": 20, "seed": 0}, data)
    model, tok = qa_lm
    model = copy.deepcopy(model).train()
    forget = pd.read_parquet(data / "forget.parquet")
    qa_blocks = pack(tok, list(forget[forget.kind == "qa"].text))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):       # measured: loss 0.008; KnowMem_f 8.3 over 12 items
        loss = model(**qa_blocks).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path / "target"
    folder.mkdir()
    tok.save_pretrained(str(folder))
    save_model(model.eval(), folder)
    # A real unlearned model (the rules' unlearn + select-epoch), not the target under its name.
    unlearned = tmp_path / "npo" / "unlearned"
    s = json.dumps({"hp": {"params": "full", "lr": 1e-2, "epochs": 1}, "device": "cpu",
                    "unlearning": {"batch_size": 2}})
    assert main(["unlearn", "--settings", s, "--bench", "b", "--method", "npo", "--seed", "0",
                 "--target", str(folder), "--data", str(data),
                 "--out", str(tmp_path / "npo" / "run")]) == 0
    assert main(["select-epoch", "--settings", '{"epoch": 1}', "--run",
                 str(tmp_path / "npo" / "run"), "--out", str(unlearned)]) == 0
    before, after = load_file(folder / "model.safetensors"), load_file(
        unlearned / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    evaluation = {**default_config["evaluation"], "metrics": ["knowmem", "utility"],
                  "knowmem": {**default_config["evaluation"]["knowmem"], "max_items": 12,
                              "max_new_tokens": 16}}
    root = tmp_path / "results"
    quants = {"none-w16": {"scheme": "none", "bits": 16}, "rtn-w4": {"scheme": "rtn", "bits": 4,
                                                                      "group_size": 16}}
    attack = {"steps": [0, 3], "data": ["forget", "holdout"], "samples": 4, "batch_size": 2,
              "lr": 1e-2, "params": "full"}
    metrics = {}

    def evaluate(method, quant, model, out):
        s = json.dumps({"evaluation": evaluation, "quant": quants[quant], "device": "cpu"})
        assert main(["evaluate", "--settings", s, "--bench", "b", "--method", method, "--hp",
                     "default" if method == "target" else "params=full", "--seed", "0",
                     "--quant", quant, "--model", str(model), "--data", str(data),
                     "--metrics", str(out / "metrics.parquet"),
                     "--samples", str(out / "samples.parquet")]) == 0
        return out / "metrics.parquet"

    for quant, q in quants.items():
        cell = root / quant
        extra = {k: v for k, v in q.items() if k not in ("scheme", "bits")}
        quantize_model(folder, cell / "target-model", q["scheme"], q["bits"], extra)
        quantize_model(unlearned, cell / "model", q["scheme"], q["bits"], extra)
        metrics["target", quant] = evaluate("target", quant, cell / "target-model",
                                            cell / "target")
        metrics["npo", quant] = evaluate("npo", quant, cell / "model", cell / "npo")
        for name, settings in (("relearn", attack), ("prune", {"sparsity": [0.5]})):
            s = json.dumps({"attack": settings, "lora": LORA, "device": "cpu"})
            assert main(["attack", "--settings", s, "--attack", name, "--seed", "0", "--source",
                         str(cell / "model"), "--data", str(data), "--out",
                         str(cell / name / "models")]) == 0
    attacked = []
    for quant in quants:
        for variant in ("relearn/forget-k3", "relearn/holdout-k3", "prune/s0.5"):
            name, vid = variant.split("/")
            model = root / quant / name / "models" / vid
            attacked.append(evaluate("npo", quant, model, root / quant / variant))
    rows = pd.read_parquet(attacked[0])
    assert set(rows.attack) == {"relearn"} and set(rows.attack_data) == {"forget"}
    assert set(rows.attack_steps) == {3}
    # one of the 2 forget people is held out of the relearning data, and scored on its own
    assert set(rows.recovery) == {"held-out"} and "forget_heldout" in set(rows.split)
    assert pd.read_parquet(attacked[2]).sparsity.iloc[0] == 0.5
    # QLoRA cell: the quantized base under an adapter, and its manifest says so.
    qlora = json.loads((root / "rtn-w4/relearn/models/forget-k3/quant_manifest.json").read_text())
    assert qlora["lora_merge"] == "adapter" and qlora["bits"] == 4

    tables = tmp_path / "tables"
    assert main(["attack-tables", "--settings", "{}", "--attacks-out",
                 str(tables / "attacks.parquet"), "--relearn-out", str(tables / "relearn.parquet"),
                 "--attack-metrics", *map(str, attacked),
                 "--base-metrics", str(metrics["npo", "none-w16"]),
                 str(metrics["npo", "rtn-w4"])]) == 0
    pd.concat([pd.read_parquet(p) for p in metrics.values()]).to_parquet(tables / "metrics.parquet")
    assert main(["durability", "--settings", "{}", "--attacks", str(tables / "attacks.parquet"),
                 "--metrics", str(tables / "metrics.parquet"), "--out",
                 str(tables / "durability"), "--labels", str(tables / "labels.csv"),
                 "--samples", *[str(p.parent / "samples.parquet")
                                for p in [*metrics.values(), *attacked]]]) == 0

    def knowmem_f(path):
        rows = pd.read_parquet(path)
        (value,) = rows[(rows.metric == "knowmem") & (rows.split == "forget")
                        & (rows.stat == "rougeL_f1")].value
        return float(value)

    t, u = knowmem_f(metrics["target", "none-w16"]), knowmem_f(metrics["npo", "none-w16"])
    f, c = knowmem_f(attacked[0]), knowmem_f(attacked[1])
    assert t > 0, "the target knows none of the forget facts: the label cannot be decided"
    labels = pd.read_csv(tables / "labels.csv")
    r = labels.iloc[0]
    assert len(labels) == 1 and r.n_items > 0
    # The point values are the tables' ratios; the label follows from the paired intervals by the
    # rule of config/README.md (attacks.label defaults), re-derived here: no retrain model is
    # attacked in this test, so a forgotten model cannot be judged beyond it.
    row = pd.read_csv(tables / "durability.csv").iloc[0]
    for column, value in (("full", u), ("relearn_k3", f), ("control_k3", c)):
        assert row[column] == pytest.approx(value / t, rel=1e-9), column
    assert r.kept == pytest.approx(u / t, rel=1e-6) and r.kept_ci_low <= r.kept <= r.kept_ci_high
    expected = "not forgotten" if not r.kept_ci_high < 1 - 0.25 else "undetermined"
    assert r.label == expected, (t, u, f, c, r.kept_ci_high)
    assert {"relearn_k3", "relearn_k3_heldout", "relearn_facts"} <= \
        set(pd.read_csv(tables / "durability.csv").columns)
    curves = pd.read_parquet(tables / "relearn.parquet")
    assert sorted(set(curves.step)) == [0, 3]
    assert {"forget", "forget_heldout"} <= set(curves[curves.metric == "knowmem"].split)

    s = json.dumps({"represent": {"samples": 8, "fisher_samples": 2}, "device": "cpu"})
    assert main(["represent", "--settings", s, "--bench", "b", "--method", "npo", "--hp",
                 "params=full", "--seed", "0", "--quant", "none-w16", "--model",
                 str(root / "none-w16/relearn/models/forget-k3"), "--target", str(folder),
                 "--retrain", str(folder), "--data", str(data), "--out",
                 str(tmp_path / "repr.parquet"), "--figure", str(tmp_path / "repr")]) == 0
    rep = pd.read_parquet(tmp_path / "repr.parquet")
    assert {"cka", "pca_similarity", "pca_shift", "pca_distance", "fisher",
            "fisher_log_ratio"} <= set(rep.measure)
    assert (tmp_path / "repr.png").exists()


def test_a_diverging_relearning_run_fails_and_writes_nothing(tiny_lm, data_dir, tmp_path):
    """A non-finite loss stops the attack (no NaN checkpoint is scored as a model that forgot
    everything): here the source cell already holds a NaN weight."""
    from safetensors.torch import save_file

    from relapse.models.guard import NonFiniteLoss
    from relapse.models.io import seal_weights

    folder = tmp_path / "cell"
    shutil.copytree(tiny_lm[0], folder)
    weights = load_file(folder / "model.safetensors")
    name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    seal_weights(folder)           # a folder written so, not one corrupted afterwards
    out = tmp_path / "relearn"
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 0"):
        run_attack("relearn", folder, out, data_dir,
                   {"steps": [0, 2], "data": ["forget"], "params": "full", "samples": 4,
                    "batch_size": 2, "lr": 1e-2})
    assert not out.exists() or not any(out.rglob("*.safetensors"))
