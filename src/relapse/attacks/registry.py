"""The attack registry: an attack turns one model cell (bench, method, hp, seed, quant) into new
model cells, one folder per variant, that the evaluate rule scores like any other.

An attack is one file in kinds/ that registers
  variants(settings) -> {variant id: columns}   the cells it writes and the keys their rows carry
                                                (attack, attack_data, attack_steps, sparsity)
  run(job) -> None                              writes every variant under job.out_dir/{variant}/
Quantization is the first attack and has its own stage (relapse.quantize).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# The key columns every attacked cell's rows carry; a column an attack does not vary is None.
ATTACK_COLUMNS = ("attack", "attack_data", "attack_steps", "sparsity")
MANIFEST = "attack_manifest.json"


@dataclass(frozen=True)
class AttackJob:
    source_dir: Path        # the attacked cell's model folder ({quant}/model)
    out_dir: Path           # one subfolder per variant is written here
    data_dir: Path
    settings: dict[str, Any]
    lora: dict[str, Any]    # unlearning.lora: the adapter shape a LoRA attacker uses
    seed: int = 0
    device: str = "cpu"
    threads: int = 1


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[AttackJob], None]
    variants: Callable[[dict], dict[str, dict[str, Any]]]
    doc: str = ""


_ATTACKS: dict[str, Attack] = {}


def register_attack(name: str, variants: Callable[[dict], dict[str, dict[str, Any]]]):
    def wrap(fn):
        _ATTACKS[name] = Attack(name, fn, variants, (fn.__doc__ or "").strip())
        return fn
    return wrap


def _load() -> None:
    from relapse.attacks import kinds

    for info in pkgutil.iter_modules(kinds.__path__):
        importlib.import_module(f"{kinds.__name__}.{info.name}")


def attack_names() -> list[str]:
    _load()
    return sorted(_ATTACKS)


def get_attack(name: str) -> Attack:
    _load()
    if name not in _ATTACKS:
        raise KeyError(f"unknown attack {name!r}; known: {', '.join(sorted(_ATTACKS))}")
    return _ATTACKS[name]


def columns(attack: str, **values) -> dict[str, Any]:
    """A variant's key columns, every one of ATTACK_COLUMNS present."""
    out = {c: None for c in ATTACK_COLUMNS}
    out.update(attack=attack, **values)
    return out


def write_variant_manifest(folder: Path, cols: dict[str, Any], source: Path, **extra) -> None:
    from relapse.io import write_json
    from relapse.provenance import provenance

    write_json(folder / MANIFEST, {"keys": cols, "source": str(source), **extra, **provenance()})
