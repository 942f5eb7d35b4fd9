"""Run one attack on one model cell: `out_dir/{variant}/` for every variant the attack
declares, written atomically as a whole (a failed job leaves nothing behind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_attack(name: str, source_dir: str | Path, out_dir: str | Path, data_dir: str | Path,
               settings: dict[str, Any], lora: dict[str, Any] | None = None, seed: int = 0,
               device: str = "cpu", threads: int = 1) -> list[str]:
    from relapse.attacks.registry import AttackJob, get_attack
    from relapse.io import atomic_dir

    attack = get_attack(name)
    with atomic_dir(out_dir) as tmp:
        attack.run(AttackJob(Path(source_dir), tmp, Path(data_dir), settings, lora or {},
                             seed=seed, device=device, threads=threads))
        missing = [v for v in attack.variants(settings) if not (tmp / v).is_dir()]
        if missing:
            raise RuntimeError(f"attack {name} wrote no folder for {', '.join(missing)}")
    return sorted(attack.variants(settings))
