"""RMU (Li et al. 2024, WMDP): steer the layer-ℓ activations of forget tokens toward c·u, u a
fixed random unit vector, and keep retain activations at the frozen model's.

As WMDP's reference code (rmu/unlearn.py) defines it:
- u: uniform [0, 1) entries, normalised (seeded by the run's seed); the losses are per-token
  mean squared errors over hidden dims, the retain one weighted by α.
- Only the MLP down-projections of decoder layers ℓ−2..ℓ are updated (its `param_ids=[6]`,
  `layer_ids=[ℓ−2, ℓ−1, ℓ]`); with params=lora, only those modules' adapters train.
  hp `modules: all` updates every Linear of those layers instead.
- α = 1200: the setting of WMDP's released Zephyr-7B checkpoint (`--alpha 1200`, c = 6.5); the
  script's argparse default is 100 (with c = 20).

The steering coefficient c must be large relative to the activations it replaces, and their
norm differs by orders of magnitude between models and layers (6.5 was tuned for Zephyr's layer
7). So by default (`steer_mode: norm`) c = steer × the mean per-token ‖h_ℓ‖ of the frozen model
over the forget set (as Adaptive RMU, Dang et al. 2025, does on its first batch; its scale 5
is the default steer); `steer_mode: raw` uses c = steer as WMDP does (e.g. steer 6.5 for its
Zephyr setting). The activation norm and c are written to the run's manifest.

On the synthetic biographies, forget and retain texts share their templates, so at α = 1200
the retain term pins layer ℓ and the forget activations barely move (measured on the tiny
test model: mean squared distance to c·u 0.6715 → 0.6719 in 5 steps; 0.48 at α = 1).
"""

from relapse.models.modules import DECODER_LINEAR_SUFFIXES
from relapse.unlearn.hparams import choice, integer
from relapse.unlearn.registry import register_forget, register_method, register_regularizer

STEER_MODES = ("norm", "raw")
# torch is imported inside the losses: config validation reads this registry without it.


def _token_mse(hidden, target, mask):
    """Mean over attended tokens of the mean squared difference over hidden dims."""
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def steering_coefficient(ctx, forget_batches, hp) -> dict:
    """c from the frozen model at θ₀, over every forget token (module docstring)."""
    mode = hp["steer_mode"]
    if mode not in STEER_MODES:
        raise ValueError(f"rmu: steer_mode {mode!r} is not one of {', '.join(STEER_MODES)}")
    import torch

    layer, steer = int(hp["layer"]), float(hp["steer"])
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in forget_batches:
            norms = ctx.hidden(batch, layer, reference=True).float().norm(dim=-1)
            mask = batch["attention_mask"].bool()
            total += float(norms[mask].double().sum())
            count += int(mask.sum())
    mean_norm = total / max(count, 1)
    c = steer * mean_norm if mode == "norm" else steer
    ctx.cache["rmu_c"] = c
    return {"activation_norm": mean_norm, "steer_mode": mode, "c": c}


@register_forget("rmu_steer", hparams={"layer": 2, "steer": 5.0, "steer_mode": "norm",
                                       "modules": "down_proj"},
                 composable=False, reduction="position", setup=steering_coefficient,
                 rules={"layer": integer(ge=0), "steer_mode": choice(*STEER_MODES),
                        "modules": choice("all", *DECODER_LINEAR_SUFFIXES)})
def steer_forget_activations(ctx, batch, hp):
    """‖h_ℓ(x_forget) − c·u‖² / d per token, u a fixed random unit vector (seeded)."""
    if "rmu_c" not in ctx.cache:
        raise RuntimeError("rmu: the steering coefficient was not set up before training")
    hidden = ctx.hidden(batch, int(hp["layer"]))
    target = ctx.cache["rmu_c"] * ctx.steering_vector(hidden.shape[-1]).to(hidden.device)
    return _token_mse(hidden, target.expand_as(hidden), batch["attention_mask"])


@register_regularizer("rmu_retain", hparams={"alpha": 1200.0}, needs_reference=True,
                      composable=False, reduction="position")
def keep_retain_activations(ctx, batch, hp):
    """‖h_ℓ(x_retain) − h_ℓ^ref(x_retain)‖² / d per token."""
    import torch

    layer = int(hp["layer"])
    hidden = ctx.hidden(batch, layer)
    with torch.no_grad():
        ref = ctx.hidden(batch, layer, reference=True)
    return _token_mse(hidden, ref, batch["attention_mask"])


def _rmu_layers(hp, n_layers):
    layer = int(hp["layer"])
    if not 0 <= layer < n_layers:
        raise ValueError(f"rmu: layer {layer} is outside the model's 0..{n_layers - 1}")
    return list(range(max(0, layer - 2), layer + 1))


def _rmu_modules(hp):
    modules = str(hp["modules"])
    if modules == "all":
        return None
    if modules not in DECODER_LINEAR_SUFFIXES:
        raise ValueError(f"rmu: modules {modules!r} is not all or one of "
                         f"{', '.join(DECODER_LINEAR_SUFFIXES)}")
    return (modules,)


register_method("rmu", forget="rmu_steer", regularizer="rmu_retain", trainable_layers=_rmu_layers,
                trainable_modules=_rmu_modules)
