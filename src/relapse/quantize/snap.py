"""Snap reference weights onto an RTN grid: the QAT / dequantized-checkpoint release scenario.

A model whose decoder Linear weights already sit on the grid is what a quantization-aware
trained or dequantized release looks like. On such a target, an unlearning update smaller than
half a step is rounded away by the same quantizer (DESIGN §5, the `-qat` arm)."""

from __future__ import annotations

from pathlib import Path


def snap_reference(source: str | Path, snap: dict, out_dir: str | Path, threads: int = 1) -> None:
    from relapse.io import atomic_dir, write_json
    from relapse.models.io import load_model, read_manifest, save_model
    from relapse.models.modules import decoder_linear_names
    from relapse.provenance import provenance
    from relapse.quantize.rtn import quantize_linear_layers
    from relapse.seeding import seed_everything

    seed_everything(0, threads)
    model = load_model(source)
    group = snap.get("group_size", 64)
    sym = snap.get("symmetric", False)
    quantize_linear_layers(model, decoder_linear_names(model), snap["bits"], group, sym)
    manifest = read_manifest(source, "reference_manifest.json")
    with atomic_dir(out_dir) as tmp:
        save_model(model, tmp, source)
        write_json(tmp / "reference_manifest.json", {
            **manifest, "snapped_from": str(source),
            "snap": {"scheme": "rtn", "bits": snap["bits"], "group_size": group, "symmetric": sym},
            **provenance(snap)})
