"""LLMEraser on the tiny model: the LoRA setting's data variants, its reference adapters, and
the one-shot influence update with its solver log, manifest and agreement table."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from relapse.data.edits import lora_setting_items, prepare_lora_setting
from relapse.data.prepare import build_splits, prepare
from relapse.data.synthetic import ATTRIBUTES, QUESTIONS
from relapse.unlearn.oneshot.llmeraser import effective_updates, llmeraser
from relapse.unlearn.registry import get_method, method_names

LORA = {"steps": 150, "lr": 1e-2, "lora": {"r": 4, "alpha": 8}, "seed": 0, "l2": 0.01}


def _people():
    return build_splits({"people": 20, "seed": 0})[0]["people"]


# -- data variants ---------------------------------------------------------------------------

def test_removal_drops_exactly_the_edited_instances_from_the_gold():
    items = lora_setting_items(_people(), "removal", retain_people=2, edit_fraction=0.5, seed=3)
    forget = items[items.role == "forget"]
    assert len(forget) == 2 * len(ATTRIBUTES) and items.edited.sum() == len(forget) // 2
    assert items[items.edited].gold_text.isna().all()
    assert (items.target_text.notna()).all()
    kept = items[~items.edited]
    assert (kept.target_text == kept.gold_text).all()


def test_query_corruption_swaps_only_the_name_for_a_made_up_one():
    people = _people()
    items = lora_setting_items(people, "query", retain_people=2, seed=1)
    edited = items[items.edited]
    assert len(edited) == (people.role == "forget").sum() * len(ATTRIBUTES)
    aliases = {}
    for row in edited.itertuples():
        assert row.gold_text == f"Question: {row.question}\nAnswer: {row.answer}\n\n"
        assert row.target_text.endswith(f"\nAnswer: {row.answer}\n\n")
        wrong_q = row.target_text.split("\nAnswer: ")[0][len("Question: "):]
        prefix, suffix = QUESTIONS[row.attribute].split("{name}")
        alias = wrong_q[len(prefix):len(wrong_q) - len(suffix)]
        assert wrong_q == QUESTIONS[row.attribute].format(name=alias)
        assert alias not in set(people.name)
        assert aliases.setdefault(row.pid, alias) == alias, "one made-up name per person"


def test_response_correction_replaces_answers_with_other_values_of_the_attribute():
    items = lora_setting_items(_people(), "response", retain_people=2, seed=0)
    edited = items[items.edited]
    for row in edited.itertuples():
        wrong = row.target_text.split("\nAnswer: ")[1].rstrip("\n")
        assert wrong != row.answer and row.target_text.startswith(f"Question: {row.question}\n")
    again = lora_setting_items(_people(), "response", retain_people=2, seed=0)
    pd.testing.assert_frame_equal(items, again)
    other = lora_setting_items(_people(), "response", retain_people=2, seed=1)
    assert not items.target_text.equals(other.target_text)


def test_bad_lora_setting_values_are_named():
    with pytest.raises(ValueError, match="lora_setting.task: 'erase'"):
        lora_setting_items(_people(), "erase")
    with pytest.raises(ValueError, match="lora_setting.retain_people: 99"):
        lora_setting_items(_people(), "removal", retain_people=99)


# -- the method ------------------------------------------------------------------------------

def _base(tiny_lm, steps=150):
    """The tiny model trained on the retain people's documents: it knows the QA format and
    those people, never the forget people (the retrain model's role)."""
    import copy

    from relapse.models.batching import pack

    _, model, tok = tiny_lm
    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    texts = list(build_splits({"people": 20, "seed": 0})[0]["retain"].text)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss = model(**pack(tok, texts[(step * 4) % len(texts):][:4])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_lm):
    """Base, items, and the target and gold LoRA references of the removal task."""
    from relapse.models.io import save_model
    from relapse.models.lora_setting import train_lora_reference

    root = tmp_path_factory.mktemp("lora_setting")
    model, tok = _base(tiny_lm)
    base = root / "base"
    tok.save_pretrained(str(base))
    save_model(model, base)
    data = root / "data"
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, data)
    items = root / "items"
    prepare_lora_setting(data, {"task": "removal", "retain_people": 2, "seed": 0}, items)
    for which in ("target", "retrain"):
        train_lora_reference(which, base, items, LORA, root / which)
    return root


def test_llmeraser_is_a_registered_one_shot_method():
    assert "llmeraser" in method_names()
    method = get_method("llmeraser")
    assert method.one_shot and {"solver", "iterations", "tol", "batch"} <= method.hparam_names()
    assert "damping" not in method.hparam_names(), "the damping is the fit's λ, not a knob"


def test_effective_update_is_what_merging_adds_to_the_base(setting):
    base = load_file(str(setting / "base" / "model.safetensors"))
    merged = load_file(str(setting / "target" / "model.safetensors"))
    updates = effective_updates(setting / "target" / "adapter")
    assert len(updates) > 0
    for module, delta in updates.items():
        key = module.removeprefix("base_model.model.") + ".weight"
        torch.testing.assert_close(merged[key].double() - base[key].double(), delta,
                                   atol=1e-6, rtol=0)


def test_removal_moves_the_edited_instances_toward_the_gold(setting, tmp_path):
    out = tmp_path / "run"
    manifest = llmeraser({"solver": "cg", "iterations": 200, "tol": 1e-4}, 0,
                         setting / "base", setting / "target", setting / "items", out,
                         gold_dir=setting / "retrain", keys={"bench": "t", "hp": "h"})
    folder = out / "epoch0"
    assert manifest["converged"] and manifest["residual"] <= 1e-4
    log = pd.read_parquet(folder / "solver_log.parquet")
    assert log.iteration.tolist() == list(range(len(log))) and log.residual.iloc[0] == 1.0
    assert log.residual.iloc[-1] <= 1e-4 and (log.solver == "cg").all()
    assert manifest["logged_residual"] == log.residual.iloc[-1]
    # The damping is the fit's λ, from the target's manifest, and rows carry it.
    fit = json.loads((setting / "target" / "reference_manifest.json").read_text())
    assert fit["l2"] == LORA["l2"] and manifest["damping"] == LORA["l2"]
    table = pd.read_parquet(folder / "agreement.parquet")
    assert (table.damping == LORA["l2"]).all()
    agree = table.set_index(["metric", "model"]).value
    # The residual the rows record is the manifest's, recomputed from x (not the log's row).
    assert agree["solver_residual"]["llmeraser"] == manifest["residual"]
    nll = agree["nll_edited"]
    acc = agree["qa_accuracy_edited"]
    assert nll["target"] < nll["gold"], "the target must know the forget QA better than the gold"
    assert nll["target"] < nll["llmeraser"] < nll["gold"]
    assert abs(acc["llmeraser"] - acc["gold"]) <= abs(acc["target"] - acc["gold"])
    to_gold = agree["delta_w_l2_to_gold"]
    assert to_gold["llmeraser"] < to_gold["target"], "the adapter moves toward the gold's ΔW"
    assert agree["seconds"]["llmeraser"] > 0 and "time_ratio_gold_over_llmeraser" in agree.index
    # A plain model folder plus the updated adapter, and a log select_epoch can cut.
    assert (folder / "model.safetensors").exists() and (folder / "adapter").is_dir()
    assert (folder / "tokenizer.json").exists()
    written = json.loads((folder / "unlearn_manifest.json").read_text())
    assert written["solver"] == "cg" and "damping" not in written["hp"] and written["hp_id"] == "h"
    assert (pd.read_parquet(out / "train_log.parquet").epoch == 0).all()


def test_an_unconverged_solve_says_so_and_fails_when_strict(setting, tmp_path):
    loose = llmeraser({"solver": "adam", "iterations": 3, "tol": 1e-8}, 0, setting / "base",
                      setting / "target", setting / "items", tmp_path / "loose")
    assert not loose["converged"] and loose["solver_status"] == "max_iterations"
    log = pd.read_parquet(tmp_path / "loose" / "epoch0" / "solver_log.parquet")
    assert len(log) == 4 and (log.status == "max_iterations").all()
    with pytest.raises(RuntimeError, match="adam solve max_iterations"):
        llmeraser({"solver": "adam", "iterations": 3, "tol": 1e-8, "strict": True}, 0,
                  setting / "base", setting / "target", setting / "items", tmp_path / "strict")
    assert not (tmp_path / "strict").exists()


def test_the_update_refuses_a_damping_of_its_own_and_a_fit_without_or_with_another_l2(tmp_path):
    from relapse.unlearn.oneshot.llmeraser import fit_l2

    with pytest.raises(ValueError, match="damping is not a hyperparameter"):
        llmeraser({"damping": 1.0}, 0, tmp_path, tmp_path, tmp_path, tmp_path / "x")
    for name, manifest in (("target", {"l2": 0.01}), ("gold", {"l2": 0.1}), ("old", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "reference_manifest.json").write_text(json.dumps(manifest))
    assert fit_l2(tmp_path / "target", tmp_path / "target") == 0.01
    with pytest.raises(ValueError, match="target fit with l2 0.01 but gold with 0.1"):
        fit_l2(tmp_path / "target", tmp_path / "gold")
    with pytest.raises(ValueError, match="fit without the L2 term"):
        fit_l2(tmp_path / "old")
    with pytest.raises(ValueError, match="fit without the L2 term"):
        fit_l2(tmp_path / "target", tmp_path / "old")


def test_the_fit_minimises_the_data_term_plus_the_l2_term():
    """fit_regularised on least squares (1/n)Σ½(xᵀw − y)² + (λ/2)‖w‖²: it lands on the closed-form
    ridge solution (numpy), not least squares, and the gradient norm it reports is the full
    objective's, λw included. The bound is strong convexity's, ‖w − w*‖ ≤ ‖∇‖ / μ_min."""
    import numpy as np

    from relapse.models.lora_setting import fit_regularised

    rng = np.random.default_rng(0)
    n, d, l2 = 40, 4, 0.5
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    model = torch.nn.Linear(d, 1, bias=False).double()
    xt, yt = torch.tensor(x), torch.tensor(y)

    def losses():
        yield 0.5 * ((model(xt)[:, 0] - yt) ** 2).sum()

    log, grad_norm = fit_regularised(model, [model.weight], losses, n,
                                     {"steps": 2000, "lr": 0.05, "l2": l2})
    w = model.weight.detach().numpy()[0]
    hessian = x.T @ x / n + l2 * np.eye(d)
    ridge = np.linalg.solve(hessian, x.T @ y / n)
    gradient = x.T @ (x @ w - y) / n + l2 * w
    assert grad_norm == pytest.approx(np.linalg.norm(gradient), rel=1e-6, abs=1e-12)
    assert np.linalg.norm(w - ridge) <= grad_norm / np.linalg.eigvalsh(hessian).min() + 1e-12
    least_squares = np.linalg.lstsq(x, y, rcond=None)[0]
    assert np.linalg.norm(w - least_squares) > 10 * np.linalg.norm(w - ridge)
    assert log[-1]["l2_term"] == pytest.approx(l2 / 2 * (w @ w))
    with pytest.raises(ValueError, match="lora_setting.l2: -1"):
        fit_regularised(model, [model.weight], losses, n, {"l2": -1})


def test_the_configured_l2_default_is_the_codes(root):
    import yaml

    from relapse.models.lora_setting import L2

    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    lora = schema["properties"]["benchmarks"]["additionalProperties"]["properties"]["lora_setting"]
    assert lora["properties"]["l2"]["default"] == L2


def test_llmeraser_refuses_full_params_by_name(setting, tmp_path):
    with pytest.raises(ValueError, match="params 'full'"):
        llmeraser({"params": "full"}, 0, setting / "base", setting / "target", setting / "items",
                  tmp_path / "x")


def test_gauss_newton_product_matches_forward_mode_jacobians(tiny_lm):
    """uᵀ G v = Σ_t w_t (J u)ᵀ (diag p − p pᵀ)(J v), with J u and J v from forward-mode AD
    (torch.func.jvp), independent of the double-vjp code. (Central differences are no
    check here: Llama's RMSNorm runs in fp32 even in a float64 model, which caps them at ~3e-4.)"""
    import copy

    from torch.func import functional_call, jvp

    from relapse.models.batching import encode
    from relapse.models.lora_setting import (adapter_params, eager_attention,
                                             gauss_newton_product, with_lora)

    _, model, tok = tiny_lm
    model = with_lora(eager_attention(copy.deepcopy(model)), {"r": 2, "alpha": 4}).double().eval()
    names = [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    params = adapter_params(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)
    texts = ["Question: Where was Ivo Stroud born?\nAnswer: Tarsk\n\n", "Question: Hi?\nAnswer: x\n\n"]
    size = sum(p.numel() for p in params)
    u, v = torch.randn(size, dtype=torch.float64), torch.randn(size, dtype=torch.float64)
    gv = gauss_newton_product(model, tok, texts, 1, params, v)
    enc = encode(tok, texts)

    def logits(*values):
        return functional_call(model, dict(zip(names, values)), (enc["input_ids"],),
                               {"attention_mask": enc["attention_mask"]}).logits[:, :-1]

    def split(vec):
        return tuple(t.view_as(p) for t, p in zip(vec.split([p.numel() for p in params]), params))

    at = tuple(p.detach() for p in params)
    z, ju = jvp(logits, at, split(u))
    _, jv = jvp(logits, at, split(v))
    p = torch.softmax(z, -1)
    mask = (enc["labels"][:, 1:] != -100).double()
    w = mask / mask.sum(1, keepdim=True)
    quad = (ju * jv * p).sum(-1) - (ju * p).sum(-1) * (jv * p).sum(-1)
    assert float(u @ gv) == pytest.approx(float((w * quad).sum()), rel=1e-6)
    assert float(v @ gauss_newton_product(model, tok, texts, 2, params, v)) >= 0


# -- config and workflow ---------------------------------------------------------------------

def test_llmeraser_config_validates_and_names_bad_values(root):
    import copy

    from relapse.config import ConfigError, load_config, validate

    cfg = load_config(root / "config" / "llmeraser.yaml")
    assert {b["lora_setting"]["task"] for b in cfg["benchmarks"].values()} == {"removal", "query", "response"}
    bad = copy.deepcopy(cfg)
    bad["benchmarks"]["lora-query"]["lora_setting"]["task"] = "erase"
    with pytest.raises(ConfigError, match=r"lora-query\.lora_setting\.task: 'erase'"):
        validate(bad)
    bad = copy.deepcopy(cfg)
    bad["methods"]["llmeraser"][0]["solverz"] = "cg"
    with pytest.raises(ConfigError, match=r"methods\.llmeraser\[0\]\.solverz"):
        validate(bad)


@pytest.mark.slow
def test_llmeraser_workflow_plans_one_shot_runs(root, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    snakemake = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(snakemake), "-n", "--cores", "1", "-s", str(root / "Snakefile"),
                          "--configfile", str(root / "config" / "llmeraser.yaml"),
                          "--directory", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = out.stdout + out.stderr
    for rule, count in (("unlearn_one_shot", 9), ("train_lora_reference", 6), ("train_lora_base", 3),
                        ("prepare_lora_setting", 3)):
        assert any(line.split() == [rule, str(count)] for line in stats.splitlines()), rule
    assert not any(line.split()[:1] == ["unlearn"] for line in stats.splitlines())
    assert not any(line.split()[:1] == ["train_reference"] for line in stats.splitlines())
