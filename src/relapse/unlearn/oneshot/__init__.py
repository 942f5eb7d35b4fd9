"""One-shot unlearning methods: a closed-form or solver-based update of a trained model, with
no training loop (LLMEraser's influence-function update). Each module here registers one
method with `register_one_shot`; relapse.unlearn.registry lists them beside the loss-driven
methods, so configs, `relapse list methods` and hp validation treat both alike. The workflow
runs them with their own rule (workflow/rules/lora_setting.smk), never through trainer.py.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from relapse.unlearn.hparams import Rule, choice


@dataclass(frozen=True)
class OneShotMethod:
    name: str
    run: Callable                     # run(hp, seed, ..., out_dir): writes a run folder
    hparams: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    one_shot: bool = True
    rules: dict[str, Rule] = field(default_factory=dict)   # what each hparam accepts

    def defaults(self) -> dict[str, Any]:
        return {"params": "lora", **self.hparams}

    def hparam_names(self) -> set[str]:
        return set(self.defaults())

    def hparam_rules(self) -> dict[str, Rule]:
        """What each hparam accepts (relapse.unlearn.hparams; unlisted: its default's type);
        a one-shot method updates a LoRA adapter, so params is lora."""
        return {"params": choice("lora"), **self.rules}


_ONE_SHOT: dict[str, OneShotMethod] = {}


def register_one_shot(name: str, hparams: dict | None = None,
                      rules: dict[str, Rule] | None = None):
    def wrap(fn):
        _ONE_SHOT[name] = OneShotMethod(name, fn, hparams or {}, (fn.__doc__ or "").strip(),
                                        rules=rules or {})
        return fn
    return wrap


def one_shot_methods() -> dict[str, OneShotMethod]:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(_ONE_SHOT)
