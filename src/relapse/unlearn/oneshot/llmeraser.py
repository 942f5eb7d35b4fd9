"""LLMEraser (arXiv 2412.00383): instance-wise unlearning of a LoRA adapter in one step.

The target adapter θ* was fit on n QA instances (relapse.data.edits) with an L2 term
(λ/2)‖θ‖² (relapse.models.lora_setting). Edited instances (removed, or replaced by a corrected
query or response) move it by the influence update, one Newton step on the gold's objective,
Δθ = −(H'/n' + λI)⁻¹ b over the LoRA parameters alone (relapse.unlearn.influence), with H' by
double backprop or Gauss-Newton products. The damping λ is not a hyperparameter here: it is the
λ the target and gold were fit with (`lora_setting.l2`, read from their manifests), since an
update damped with a λ the fit did not have is biased; a target and gold fit with different λ,
or without one, are refused. Unlike the released code, the solve is checked: its relative
residual per iteration goes to solver_log.parquet, the residual ‖(H'/n' + λI)x − b‖/‖b‖ that x
really reaches (recomputed after the solve with the same products, not the solver's last
logged value) goes to the manifest and agreement.parquet, and a solve that misses `tol` says so
(and fails the job with `strict: true`). The updated adapter is saved (`adapter/`) beside merged
weights, like every other method's checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from relapse.unlearn.hparams import FLAG, check, choice, integer, number
from relapse.unlearn.oneshot import register_one_shot
from relapse.unlearn.solvers import SOLVERS

HPARAMS = {
    "solver": "cg",        # cg | lissa | adam (the paper's: Adam on ½xᵀAx − bᵀx)
    "iterations": 100,
    "tol": 1e-4,           # relative residual ‖(H + λI)x − b‖ / ‖b‖
    "batch": 64,           # instances per forward in gradients and Hessian-vector products
    "scale": 50.0,         # lissa: must exceed half of the largest eigenvalue of H/n + λI
    "adam_lr": 1e-3,       # adam
    "hessian": "edited",   # edited: H of the edited objective (exact on quadratics) | original
    "curvature": "gauss_newton",   # gauss_newton (PSD) | exact (∇² by double backprop)
    "strict": False,       # fail the job when the solve does not reach tol
}


# What each hparam accepts; config validation checks every grid value against these before any
# job runs (relapse.unlearn.hparams), and the job checks them again with the same rules.
RULES = {
    "solver": choice(*SOLVERS),
    "iterations": integer(ge=1),
    "tol": number(gt=0),
    "batch": integer(ge=1),
    "scale": number(gt=0),
    "adam_lr": number(gt=0),
    "hessian": choice("edited", "original"),
    "curvature": choice("gauss_newton", "exact"),
    "strict": FLAG,
    "params": choice("lora"),
}


def _check(hp: dict) -> None:
    if "damping" in hp:
        raise ValueError("llmeraser: damping is not a hyperparameter; the update damps with the λ "
                         "its target and gold were fit with (benchmarks.NAME.lora_setting.l2)")
    check("llmeraser", {**HPARAMS, "params": "lora"}, RULES, hp)


def edit_sets(items: pd.DataFrame, hessian: str) -> dict[str, list[str]]:
    """The texts of the update: `original` (what the target saw of the edited instances),
    `edited` (what should replace them; none for removal), `hessian` (the set H sums over),
    `trained` and `gold` (the target's and the gold's training sets)."""
    edited = items[items.edited]
    return {"original": list(edited.target_text.dropna()), "edited": list(edited.gold_text.dropna()),
            "hessian": list(items.gold_text.dropna() if hessian == "edited" else items.target_text.dropna()),
            "trained": list(items.target_text.dropna()), "gold": list(items.gold_text.dropna())}


def fit_l2(target_dir: str | Path, gold_dir: str | Path | None = None) -> float:
    """λ of the target's fit (its reference_manifest.json's `l2`), the update's damping. Refuses
    a target fit without the L2 term, and a gold fit with another λ: the update would then
    approximate a refit of a different objective than the one it is compared with."""
    from relapse.io import read_json

    def l2_of(folder, role):
        manifest = read_json(Path(folder) / "reference_manifest.json")
        if manifest.get("l2") is None:
            raise ValueError(f"llmeraser: the {role} {folder} was fit without the L2 term "
                             "(λ/2)‖θ‖² that the update's damping assumes (no `l2` in its "
                             "reference_manifest.json); refit it with lora_setting.l2")
        return float(manifest["l2"])

    l2 = l2_of(target_dir, "target")
    if gold_dir is not None and l2_of(gold_dir, "gold") != l2:
        raise ValueError(f"llmeraser: target fit with l2 {l2!r} but gold with "
                         f"{l2_of(gold_dir, 'gold')!r}; the update damps with the fit's λ, so "
                         "both must share one lora_setting.l2")
    return l2


def effective_updates(adapter_dir: str | Path) -> dict[str, "torch.Tensor"]:
    """ΔW = (α/r)·B A per adapted module of a saved peft adapter (α/√r with rsLoRA)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in weights.items():
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0]
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            out[module] = scale * (b.double() @ a.double())
    return out


def update_distance(a: dict, b: dict) -> float:
    """√Σ_modules ‖ΔW_a − ΔW_b‖²_F over the union of modules (a missing module counts as 0)."""
    total = 0.0
    for module in set(a) | set(b):
        diff = a.get(module, 0) - b.get(module, 0)
        total += float((diff ** 2).sum())
    return total ** 0.5




def agreement(models: dict, tokenizer, items: pd.DataFrame, adapters: dict, seconds: dict,
              batch: int, device: str) -> list[dict]:
    """Rows (metric, model, value): QA accuracy and mean NLL of each model on the edited
    instances' correct QA; each adapter's ΔW distance to the gold's; wall times."""
    import torch

    from relapse.data.prompts import get_template
    from relapse.models.batching import answers_correct
    from relapse.models.lora_setting import item_nll_sums

    # The edited instances as they should be: the correct question and answer.
    edited = items[items.edited]
    questions, answers = list(edited.question), list(edited.answer)
    # in the template the items were written in (relapse.data.edits; older tables: qa)
    form = get_template(edited.template.iloc[0] if "template" in edited else None)
    prompts = [form.prompt(q, tokenizer) for q in questions]
    texts = [form.example(q, a, tokenizer) for q, a in zip(questions, answers)]
    rows = []
    for name, model in models.items():
        ok = answers_correct(model, tokenizer, prompts, answers)
        with torch.no_grad():
            nll = sum(float(s) for s in item_nll_sums(model, tokenizer, texts, batch, device))
        rows += [{"metric": "qa_accuracy_edited", "model": name, "value": sum(ok) / len(ok)},
                 {"metric": "nll_edited", "model": name, "value": nll / len(texts)}]
    gold = adapters["gold"]
    for name, update in adapters.items():
        rows.append({"metric": "delta_w_l2_to_gold", "model": name,
                     "value": update_distance(update, gold)})
        rows.append({"metric": "delta_w_l2", "model": name, "value": update_distance(update, {})})
    for name, value in seconds.items():
        rows.append({"metric": "seconds", "model": name, "value": value})
    rows.append({"metric": "time_ratio_gold_over_llmeraser", "model": "llmeraser",
                 "value": seconds["gold"] / seconds["llmeraser"]})
    return rows


def _against_gold(model, tokenizer, items, target_dir: Path, gold_dir: Path, folder: Path,
                  seconds: float, batch: int, device: str) -> pd.DataFrame:
    """The agreement table of the updated `model` (adapter saved in `folder`) with the gold."""
    from relapse.io import read_json
    from relapse.models.io import load_model

    models = {"target": load_model(target_dir, device=device),
              "gold": load_model(gold_dir, device=device), "llmeraser": model}
    adapters = {name: effective_updates(path / "adapter") for name, path in
                (("target", target_dir), ("gold", gold_dir), ("llmeraser", folder))}
    times = {"llmeraser": seconds,
             "gold": float(read_json(gold_dir / "reference_manifest.json")["seconds"])}
    return pd.DataFrame(agreement(models, tokenizer, items, adapters, times, batch, device))


@register_one_shot("llmeraser", hparams=HPARAMS, rules=RULES)
def llmeraser(hp: dict, seed: int, base_dir, target_dir, items_dir, out_dir, gold_dir=None,
              keys: dict | None = None, device: str = "cpu", threads: int = 1) -> dict:
    """Influence-function update of the target's LoRA adapter for the edited instances
    (LLMEraser), solved by CG, LiSSA or Adam-on-the-quadratic with its residual logged."""
    import torch
    from peft import PeftModel

    from relapse.io import atomic_dir, read_json, write_json, write_parquet
    from relapse.models.io import load_model, save_model
    from relapse.models.lora_setting import (adapter_params, eager_attention,
                                             gauss_newton_product, item_nll_sums)
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything
    from relapse.unlearn.influence import influence_update, unflatten

    hp = {**HPARAMS, "params": "lora", **hp}
    _check(hp)
    keys = dict(keys or {})
    seed_everything(seed, threads)
    target_dir = Path(target_dir)
    if not (target_dir / "adapter").is_dir():
        raise FileNotFoundError(f"llmeraser: {target_dir} has no adapter/; its target must be a "
                                "LoRA-setting reference (benchmarks.NAME.lora_setting)")
    l2 = fit_l2(target_dir, gold_dir)
    items = pd.read_parquet(Path(items_dir) / "items.parquet")
    sets = edit_sets(items, hp["hessian"])
    batch = int(hp["batch"])
    start = time.time()
    tokenizer = load_tokenizer(target_dir)
    base = eager_attention(load_model(base_dir, device=device))
    model = PeftModel.from_pretrained(base, str(target_dir / "adapter"), is_trainable=True).eval()
    params = adapter_params(model)
    for p in params:
        p.data = p.data.float()

    def losses(texts):
        return lambda: item_nll_sums(model, tokenizer, texts, batch, device)

    def gauss_newton(v):
        return gauss_newton_product(model, tokenizer, sets["hessian"], batch, params, v, device)

    delta, result = influence_update(
        params, len(sets["trained"]), hessian=losses(sets["hessian"]),
        original=losses(sets["original"]), edited=losses(sets["edited"]),
        damping=l2, solver=hp["solver"], iterations=int(hp["iterations"]),
        tol=float(hp["tol"]), curvature=gauss_newton if hp["curvature"] == "gauss_newton" else None,
        n_edited=len(sets["gold"]), n_hessian=len(sets["hessian"]), scale=float(hp["scale"]),
        lr=float(hp["adam_lr"]))
    status = (f"llmeraser: {hp['solver']} solve {result.status} at relative residual "
              f"{result.residual:.3g} (tol {float(hp['tol']):g}) after {result.log[-1]['iteration']} "
              "iterations")
    print(status, flush=True)
    if hp["strict"] and not result.converged:
        raise RuntimeError(status + "; raise iterations or lora_setting.l2, or set strict: false")
    with torch.no_grad():
        for p, d in zip(params, unflatten(delta.to(params[0].device), params)):
            p.add_(d)
    seconds = time.time() - start

    log = pd.DataFrame(result.log).assign(solver=hp["solver"], status=result.status)
    meta = provenance({"method": "llmeraser", "hp": hp, "seed": seed})
    manifest = {
        **keys, "hp_id": keys.get("hp"), "method": "llmeraser", "hp": hp, "params": "lora",
        "seed": seed,
        "solver": hp["solver"], "solver_status": result.status, "converged": result.converged,
        "residual": result.residual, "logged_residual": float(result.log[-1]["residual"]),
        "tol": float(hp["tol"]), "damping": l2,
        "iterations": int(result.log[-1]["iteration"]), "seconds": seconds,
        "instances": len(sets["trained"]), "edited": int(items.edited.sum()),
        "update_norm": float(delta.norm()), "lora_parameters": int(sum(p.numel() for p in params)),
        "items_manifest": read_json(Path(items_dir) / "manifest.json")
        if (Path(items_dir) / "manifest.json").exists() else {}, **meta}
    with atomic_dir(out_dir) as run_dir:
        folder = run_dir / "epoch0"
        folder.mkdir()
        model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
        write_parquet(folder / "solver_log.parquet", log, meta)
        if gold_dir is not None:
            task = manifest["items_manifest"].get("lora_setting", {}).get("task", "")
            frame = _against_gold(model, tokenizer, items, target_dir, Path(gold_dir), folder,
                                  seconds, batch, device)
            frame.loc[len(frame)] = {"metric": "solver_residual", "model": "llmeraser",
                                     "value": result.residual}
            for key, value in {**keys, "seed": seed, "solver": hp["solver"], "damping": l2,
                               "task": task}.items():
                frame[key] = value
            write_parquet(folder / "agreement.parquet", frame, meta)
            manifest["agreement"] = {f"{r.metric}/{r.model}": r.value for r in frame.itertuples()}
        save_model(model.merge_and_unload(), folder, target_dir)
        write_json(folder / "unlearn_manifest.json", manifest)
        write_parquet(run_dir / "train_log.parquet",
                      log.assign(epoch=0, step=log.iteration), meta)
    return manifest
