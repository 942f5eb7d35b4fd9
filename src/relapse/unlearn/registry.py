"""The method registry.

Most methods are a forget objective plus an optional regularizer: `npo_gdr` = the `npo` forget
loss + `alpha` × the `gdr` regularizer, so one new forget loss (one file in objectives/) comes
with every regularizer. Each such method also has a `_sure` variant (saliency-masked, arXiv
2410.16454) and the smoothed variants `_sam`, `_rs`, `_wa` (smoothing.py, arXiv 2502.05374).
Methods that are not such a sum (RMU) register themselves whole with `register_method`.

Objectives receive a `StepContext` (step.py) and return a scalar tensor:
  forget(ctx, batch, hp)       -- batch from the forget split, with `ref_seq_logp` when asked,
                                  and a preferred answer per row (`preferred_*`, preference.py)
                                  when the objective `needs_preferred`
  regularizer(ctx, batch, hp)  -- batch from the retain split

Each objective declares its `reduction`, the units its value is a mean over, so that gradient
accumulation can weight a micro-batch by its share of them and stay exact:
  token     -- scored (next-token) positions: labels[:, 1:] != -100 (NLL, per-token KL)
  position  -- attended positions: attention_mask == 1 (per-token hidden-state losses, RMU)
  sequence  -- sequences (NPO, SimNPO: a mean of per-sequence terms)
A dict {loss_variant: reduction} gives a different one under a loss variant (MUSE's code).
An objective whose mean is over a subset of those units (CE-U skips each answer's first tokens)
declares `units(batch, hp) -> int`, the count its value is a mean over, in their place.
A forget objective may also have a `setup(ctx, forget_batches, hp) -> dict`, run once at θ₀
before training (RMU's activation norm), a regularizer one on the retain batches (PDU's
constraint level); what it returns goes into the run's manifest. An `after_step(ctx, totals, hp,
epoch) -> dict` runs after every optimizer step (PDU's dual ascent; a weight it keeps in
`ctx.cache["alpha"]` replaces α); what it returns goes into that step's train_log row.
Beside its `hparams` defaults an objective declares `rules`, what each value may be
(relapse.unlearn.hparams): config validation checks every grid value against them, without
importing torch (objective files import it inside their losses).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from relapse.unlearn.hparams import Rule, choice, integer, number

# Hyperparameters every method takes (the training loop reads them).
COMMON_HPARAMS = {"lr": 1e-4, "epochs": 5, "params": "lora"}
# SURE: only modules whose forget-gradient norm is at or above this percentile are updated.
SALIENCY_HPARAMS = {"gamma": 90.0}
# What those accept (relapse.unlearn.hparams); an objective declares its own beside its defaults.
COMMON_RULES = {"lr": number(gt=0), "epochs": integer(ge=1), "params": choice("lora", "full")}
SALIENCY_RULES = {"gamma": number(ge=0, le=100)}
REDUCTIONS = ("token", "position", "sequence")


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable
    hparams: dict[str, Any] = field(default_factory=dict)
    needs_ref_seq_logp: bool = False   # per-sequence log π_ref on forget data, precomputed
    needs_reference: bool = False      # a frozen reference forward during training
    composable: bool = True            # combined automatically with the other kind
    doc: str = ""
    reduction: str | dict = "token"    # what the value is a mean over (module docstring)
    setup: Callable | None = None      # run once at θ₀ before training
    rules: dict[str, Rule] = field(default_factory=dict)   # what each hparam accepts
    # a (rejected, preferred) pair per forget row (relapse.unlearn.preference): the batch carries
    # the preferred sequence beside the forget one, with its reference log-prob
    needs_preferred: bool = False
    units: Callable | None = None      # (batch, hp) -> the count the mean is over, if not reduction's
    after_step: Callable | None = None   # (ctx, totals, hp, epoch) -> dict for the train_log row

    def reduction_for(self, loss_variant: str) -> str:
        if isinstance(self.reduction, dict):
            return self.reduction.get(loss_variant, self.reduction["paper"])
        return self.reduction


def _check_reduction(name: str, reduction) -> None:
    values = reduction.values() if isinstance(reduction, dict) else [reduction]
    if isinstance(reduction, dict) and "paper" not in reduction:
        raise ValueError(f"objective {name}: a reduction dict needs a 'paper' entry: {reduction}")
    for value in values:
        if value not in REDUCTIONS:
            raise ValueError(f"objective {name}: reduction {value!r} is not one of "
                             f"{', '.join(REDUCTIONS)}")


_FORGET: dict[str, Objective] = {}
_REGULARIZERS: dict[str, Objective] = {}
_EXPLICIT: dict[str, dict[str, Any]] = {}


def register_forget(name: str, hparams: dict | None = None, needs_ref_seq_logp: bool = False,
                    needs_reference: bool = False, composable: bool = True,
                    reduction: str | dict = "token", setup: Callable | None = None,
                    rules: dict[str, Rule] | None = None, needs_preferred: bool = False,
                    units: Callable | None = None):
    _check_reduction(name, reduction)

    def wrap(fn):
        _FORGET[name] = Objective(name, fn, hparams or {}, needs_ref_seq_logp, needs_reference,
                                  composable, (fn.__doc__ or "").strip(), reduction, setup,
                                  rules or {}, needs_preferred, units)
        return fn
    return wrap


def register_regularizer(name: str, hparams: dict | None = None, needs_reference: bool = False,
                         composable: bool = True, reduction: str | dict = "token",
                         rules: dict[str, Rule] | None = None, setup: Callable | None = None,
                         after_step: Callable | None = None):
    _check_reduction(name, reduction)

    def wrap(fn):
        _REGULARIZERS[name] = Objective(name, fn, {"alpha": 1.0, **(hparams or {})}, False,
                                        needs_reference, composable, (fn.__doc__ or "").strip(),
                                        reduction, setup,
                                        rules={"alpha": number(ge=0), **(rules or {})},
                                        after_step=after_step)
        return fn
    return wrap


def register_method(name: str, forget: str, regularizer: str | None = None,
                    trainable_layers: Callable | None = None,
                    trainable_modules: Callable | None = None) -> None:
    """A method that is not an automatic combination; `trainable_layers(hp, n_layers)` returns
    the decoder layer indices it may change (None: all), `trainable_modules(hp)` the Linear
    module names (last name component, e.g. `down_proj`) it may change there (None: all)."""
    _EXPLICIT[name] = {"forget": forget, "regularizer": regularizer,
                       "trainable_layers": trainable_layers,
                       "trainable_modules": trainable_modules}


@dataclass(frozen=True)
class Method:
    name: str
    forget: Objective
    regularizer: Objective | None = None
    saliency: bool = False
    trainable_layers: Callable | None = None
    trainable_modules: Callable | None = None
    smoothing: str | None = None       # "sam", "rs" or "wa" (smoothing.py)

    def _merged(self, attr: str, common: dict, saliency: dict) -> dict[str, Any]:
        """The shared entries, then the forget objective's, the regularizer's, saliency's and
        the smoothing's."""
        from relapse.unlearn.smoothing import SMOOTHINGS

        out = dict(common)
        for objective in (self.forget, self.regularizer):
            if objective:
                out.update(getattr(objective, attr))
        if self.saliency:
            out.update(saliency)
        if self.smoothing:
            out.update(SMOOTHINGS[self.smoothing][attr])
        return out

    def defaults(self) -> dict[str, Any]:
        return self._merged("hparams", COMMON_HPARAMS, SALIENCY_HPARAMS)

    def hparam_names(self) -> set[str]:
        return set(self.defaults())

    def hparam_rules(self) -> dict[str, Rule]:
        """What each hparam accepts (relapse.unlearn.hparams; unlisted: its default's type)."""
        return self._merged("rules", COMMON_RULES, SALIENCY_RULES)

    @property
    def needs_reference(self) -> bool:
        return self.forget.needs_reference or bool(self.regularizer and self.regularizer.needs_reference)


def _load_objectives() -> None:
    from relapse.unlearn import objectives

    for info in pkgutil.iter_modules(objectives.__path__):
        importlib.import_module(f"{objectives.__name__}.{info.name}")


def _methods() -> dict[str, Method]:
    from relapse.unlearn.smoothing import SMOOTHINGS

    _load_objectives()
    out = {}
    for fname, forget in _FORGET.items():
        if not forget.composable:
            continue
        combos = [(fname, None)] + [(f"{fname}_{r}", reg) for r, reg in _REGULARIZERS.items()
                                    if reg.composable]
        for name, reg in combos:
            out[name] = Method(name, forget, reg)
            out[f"{name}_sure"] = Method(f"{name}_sure", forget, reg, saliency=True)
            for smoothing in SMOOTHINGS:
                out[f"{name}_{smoothing}"] = Method(f"{name}_{smoothing}", forget, reg,
                                                    smoothing=smoothing)
    for name, spec in _EXPLICIT.items():
        reg = _REGULARIZERS[spec["regularizer"]] if spec["regularizer"] else None
        out[name] = Method(name, _FORGET[spec["forget"]], reg,
                           trainable_layers=spec["trainable_layers"],
                           trainable_modules=spec["trainable_modules"])
    # One-shot methods (no training loop, e.g. llmeraser) live in unlearn/oneshot/.
    from relapse.unlearn.oneshot import one_shot_methods

    out.update(one_shot_methods())
    return out


def method_names() -> list[str]:
    return sorted(_methods())


def get_method(name: str) -> Method:
    methods = _methods()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name]
