"""Quantization survival diagnostics (DESIGN §8): does an unlearning update survive quantization?

Per decoder Linear module of an unlearned model, at each quantization of the grid, against the
target quantized the same way (W: full precision, Q: the quantized weights; t target, u unlearned;
x: the module's input activations on forget texts, in the unlearned full-precision model):

- delta_over_step: mean |W_u − W_t| / step_t, the update in units of the quantization step of
  the target's grid (the step a weight must move to change its code). On a codebook grid (bnb
  fp4/nf4) step_t is the local spacing around each weight's level (relapse.quantize.grid);
- same_code_fraction: fraction of weights whose quantized value did not move to another level.
  Uniform grids: |Q(W_u) − Q(W_t)| < step_t/2, the same code where the grid did not move, and
  still the same level where an update of a group's min or max rescaled the grid slightly
  (exact equality would count every weight of such a group as changed). Codebook grids: the
  same codebook level, each model's weights read against its own block absmax;
- update_survival: the projection of the quantized update onto the full-precision one,
  ⟨ΔQ·x, ΔW·x⟩ / ‖ΔW·x‖² summed over forget tokens (= cosine × norm_ratio). About 1: the
  unlearning survives quantization; about 0: quantization erased it.

Two cases have no such finding, and their rows carry NaN and say why in `note`. AWQ folds
per-channel scales into the norms and the preceding Linear rows, so its quantized Linear
weights live in a different basis from the full-precision ones. With `lora_merge: adapter` the
LoRA update stays in full precision over the quantized base, so ΔQ = ΔW by construction (the
survival would read 1 whatever the quantizer) and the unlearned weights have no code; only
delta_over_step, the update against the base's grid, still says something.

Models load in the evaluation's dtype (`evaluation.dtype`): the weights and activations are those
the evaluated model computes with; every row records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DIAGNOSTICS_DEFAULTS = {"split": "forget", "samples": 32, "max_tokens": 128}
DTYPES = ("float32", "bfloat16", "float16")
PROJECTIONS = ("update_survival", "cosine", "norm_ratio")
AWQ_NOTE = ("awq folds activation scales into the weights: per-module comparison with the "
            "full-precision update is undefined")
ADAPTER_NOTE = ("lora_merge adapter: the LoRA update stays full precision over the quantized "
                "base, so the quantized update equals the full one by construction")


def _ratios(dot: float, qq: float, ww: float) -> dict[str, float]:
    nan = float("nan")
    if ww == 0.0:
        return {"update_survival": nan, "cosine": nan, "norm_ratio": nan}
    cosine = dot / (qq ** 0.5 * ww ** 0.5) if qq > 0 else nan
    return {"update_survival": dot / ww, "cosine": cosine, "norm_ratio": (qq / ww) ** 0.5}


def same_code(q_t, q_u, grid_t, grid_u):
    """Per weight: did Q(W_u) stay on the level of Q(W_t)? (see the module docstring)"""
    if grid_t.is_codebook:
        return grid_t.level_index(q_t) == grid_u.level_index(q_u)
    return (q_u.double() - q_t.double()).abs() < grid_t.scale.double() / 2


def weight_diagnostics(w_t, w_u, q_t, q_u, grid_t, grid_u) -> dict[str, float]:
    """Weight-level statistics of one module; grid_t / grid_u: the quantized target's and
    unlearned model's grids (relapse.quantize.grid)."""
    delta = (w_u.double() - w_t.double()).abs()
    step_t = grid_t.local_step(q_t).double()
    return {"n_weights": int(w_t.numel()),
            "mean_abs_delta": float(delta.mean()),
            "delta_over_step": float((delta / step_t.clamp(min=1e-12)).mean()),
            "changed_fraction": float((w_u != w_t).double().mean()),
            "same_code_fraction": float(same_code(q_t, q_u, grid_t, grid_u).double().mean())}


def _linear_weights(model_dir: Path, names, dtype: str = "float32") -> dict[str, Any]:
    """Effective weights of the Linear modules `names` of a quantize-stage folder: decoded
    straight from its codes (no model is built), in `dtype` as a loaded model holds them; in
    lora_merge: adapter mode, the model's, with the full-precision LoRA update merged."""
    import torch

    from relapse.models.codes import decode_tensors, is_codes_folder
    from relapse.models.io import check_model_files, read_manifest
    from relapse.quantize.runtime import load_quantized_model

    adapter = read_manifest(model_dir, "quant_manifest.json").get("lora_merge") == "adapter" \
        and (Path(model_dir) / "adapter").is_dir()
    if is_codes_folder(model_dir) and not adapter:
        check_model_files(model_dir)
        weights = decode_tensors(model_dir, [f"{n}.weight" for n in names])
        return {n: weights[f"{n}.weight"].to(getattr(torch, dtype)).float() for n in names}
    model = load_quantized_model(model_dir, kernels=False, dtype=dtype)
    if hasattr(model, "merge_and_unload"):       # a PeftModel: the adapter over the base
        model = model.merge_and_unload()
    return {n: model.get_submodule(n).weight.detach().float().cpu() for n in names}


def _forget_activations(model, names, texts, tokenizer, max_tokens, sink) -> int:
    """Run the forget texts through `model`; `sink(name, x)` receives each module's inputs."""
    import torch

    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: sink(n, inp[0].detach().reshape(-1, inp[0].shape[-1])))
        for n in names]
    tokens = 0
    try:
        with torch.no_grad():
            for text in texts:   # one text a forward: no padding tokens among the activations
                ids = tokenizer(text, return_tensors="pt", truncation=True,
                                max_length=max_tokens).input_ids.to(model.device)
                model(ids)
                tokens += ids.shape[1]
    finally:
        for h in hooks:
            h.remove()
    return tokens


def _projection_sums(model, deltas_w, deltas_q, texts, tokenizer, max_tokens
                     ) -> tuple[dict[str, list[float]], int]:
    """Per module: [⟨ΔQx, ΔWx⟩, ‖ΔQx‖², ‖ΔWx‖²] summed over the forget tokens. Products in
    float32 (sums in float64): the ratios need no more, and it halves the time on a CPU."""
    import torch

    sums = {n: [0.0, 0.0, 0.0] for n in deltas_q}

    def sink(name, x):
        if name not in deltas_q:
            return
        x = x.float()
        dw = x @ deltas_w[name].T
        dq = x @ deltas_q[name].T
        acc = sums[name]
        acc[0] += float((dq * dw).sum(dtype=torch.float64))
        acc[1] += float((dq * dq).sum(dtype=torch.float64))
        acc[2] += float((dw * dw).sum(dtype=torch.float64))

    tokens = _forget_activations(model, list(deltas_q), texts, tokenizer, max_tokens, sink)
    return sums, tokens


def survival_diagnostics(target_dir, unlearned_dir, cells: list[tuple[str, str, str]],
                         data_dir, keys: dict, cfg: dict, out: str | Path,
                         device: str = "cpu", threads: int = 1, dtype: str = "float32"):
    """Write diagnostics.parquet for one unlearned model over `cells`, each a tuple
    (quant id, the target's quantized folder, the unlearned model's quantized folder), with
    every model loaded in `dtype` (the evaluation's)."""
    import pandas as pd

    from relapse.data.prepare import load_split
    from relapse.io import write_parquet
    from relapse.models.io import load_model, read_manifest
    from relapse.models.modules import layer_index
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.quantize.grid import read_grids
    from relapse.seeding import seed_everything

    unknown = set(cfg) - set(DIAGNOSTICS_DEFAULTS)
    if unknown:
        raise ValueError(f"diagnostics: unknown setting(s) {', '.join(sorted(unknown))}")
    if dtype not in DTYPES:
        raise ValueError(f"diagnostics: dtype (evaluation.dtype) must be one of "
                         f"{', '.join(DTYPES)}, got {dtype!r}")
    cfg = {**DIAGNOSTICS_DEFAULTS, **cfg}
    seed_everything(0, threads)
    target_dir, unlearned_dir = Path(target_dir), Path(unlearned_dir)
    unlearned = load_model(unlearned_dir, device=device, dtype=dtype)
    tokenizer = load_tokenizer(unlearned_dir)
    texts = load_split(data_dir, cfg["split"])["text"].tolist()[: cfg["samples"]]
    all_grids = []
    for _, tq_dir, _ in cells:
        all_grids.append(read_grids(tq_dir))
        if not all_grids[-1]:
            raise ValueError(f"{tq_dir}: no quantized weights (a full-precision cell has "
                             "no quantization to diagnose)")
    names = sorted(set().union(*all_grids))
    target = load_model(target_dir, dtype=dtype)
    w_t = {n: target.get_submodule(n).weight.detach().float().cpu() for n in names}
    del target
    w_u = {n: unlearned.get_submodule(n).weight.detach().float().cpu() for n in names}
    deltas_w = {n: (w_u[n] - w_t[n]).to(device) for n in names}

    # One cell at a time: its two quantized weight sets, its ΔQ and one forward pass over the
    # forget texts. Memory stays at about four copies of the Linear weights whatever the number
    # of cells (holding every cell at once took 12 GB on SmolLM2-135M x 10 quants, and the OOM
    # killer); the extra forward passes are cheap next to the projections.
    rows = []
    nan = float("nan")
    for (quant, tq_dir, uq_dir), grids_t in zip(cells, all_grids):
        tq_dir, uq_dir = Path(tq_dir), Path(uq_dir)
        manifest = read_manifest(uq_dir, "quant_manifest.json")
        scaled_basis = manifest.get("settings", {}).get("basis") == "awq-scaled"
        adapter = manifest.get("lora_merge") == "adapter"
        grids_u = read_grids(uq_dir)
        quantized = [n for n in names if n in grids_t]
        q_t = _linear_weights(tq_dir, quantized, dtype)
        q_u = _linear_weights(uq_dir, quantized, dtype)
        if adapter or scaled_basis:       # no projection to report: skip the forward passes
            sums, tokens = {n: (0.0, 0.0, 0.0) for n in quantized}, 0
        else:
            deltas_q = {n: (q_u[n] - q_t[n]).to(device) for n in quantized}
            sums, tokens = _projection_sums(unlearned, deltas_w, deltas_q, texts, tokenizer,
                                            cfg["max_tokens"])
            del deltas_q
        for name in quantized:
            layer = layer_index(name)
            grid_t = grids_t[name]
            row = {**keys, "quant": quant, "scheme": manifest.get("scheme"),
                   "bits": manifest.get("bits"), "lora_merge": manifest.get("lora_merge"),
                   "grid": "codebook" if grid_t.is_codebook else "uniform", "dtype": dtype,
                   "module": name, "layer": -1 if layer is None else layer,
                   "kind": name.rsplit(".", 1)[-1], "tokens": tokens, "note": ""}
            stats = weight_diagnostics(w_t[name], w_u[name], q_t[name], q_u[name], grid_t,
                                       grids_u[name])
            stats.update(_ratios(*sums[name]))
            if scaled_basis:
                stats.update({k: nan for k in ("delta_over_step", "same_code_fraction",
                                               *PROJECTIONS)})
                row["note"] = AWQ_NOTE
            elif adapter:
                stats.update({k: nan for k in ("same_code_fraction", *PROJECTIONS)})
                row["note"] = ADAPTER_NOTE
            rows.append({**row, **stats})
        del q_t, q_u
    frame = pd.DataFrame(rows)
    write_parquet(out, frame, provenance(cfg, keys=keys))
    return frame
