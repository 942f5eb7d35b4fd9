"""Which survival diagnostics the grid runs (DESIGN 8): the quants that change the weights, and
one diagnostics.parquet per quantized unlearned model. Planning only (the workflow and the
report read it); the diagnostics themselves are in diagnostics.py."""

from __future__ import annotations

from relapse.grid import Selection, quant_settings, quantizes_selected, unlearned_models
from relapse.quantize.registry import get_quantizer


def diagnosed_quants(cfg: dict) -> list[str]:
    """Quant ids the survival diagnostics cover: every scheme that changes the weights."""
    return [q for q, s in quant_settings(cfg).items() if not get_quantizer(s["scheme"]).is_identity]


def has_diagnostics(cfg: dict) -> bool:
    return bool(cfg["quantization"]["diagnostics"]["enabled"] and diagnosed_quants(cfg)
                and any(True for _ in unlearned_models(cfg)))


def diagnostics_files(cfg: dict, selected: Selection | None = None) -> list[str]:
    """One diagnostics.parquet per quantized unlearned model, when enabled and some quant changes
    weights (under quantization.models: selected, only the selected models: none before the
    selection is known)."""
    if not has_diagnostics(cfg):
        return []
    return [f"results/{b}/{m}/{hp}/s{seed}/diagnostics.parquet"
            for b, m, hp, seed in unlearned_models(cfg)
            if not quantizes_selected(cfg) or (m, hp) in (selected or {}).get(b, set())]
