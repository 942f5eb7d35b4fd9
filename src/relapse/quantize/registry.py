"""The quantizer registry. A quantizer changes a loaded model's weights in place (fake-quant:
quantize then dequantize, so every scheme's output loads and runs the same way on CPU and GPU)
and returns the settings it used, for the manifest.

Besides the weights, a quantizer records the codes the folder stores for each weight it
quantized (`QuantJob.record_codes`, relapse.models.codes) and the grid of each
(`QuantJob.record_step`, relapse.quantize.grid), which the survival diagnostics compare codes on
and divide weight updates by: per module `step[out, groups]` plus `group_index[in]` (the group
of each input column: per-channel, per-group and GPTQ's act-order layouts alike), or, for a
codebook scheme (`QuantJob.codebook` set), the block absmax in that layout.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_QUANTIZERS: dict[str, "Quantizer"] = {}


@dataclass
class QuantJob:
    """What a quantizer may need beyond the model: where the model came from (libraries that
    load a folder themselves), the prepared data (calibration), a folder for the library's own
    packed checkpoint, the device and thread count."""
    source_dir: Path
    out_dir: Path
    data_dir: Path | None = None
    device: str = "cpu"
    threads: int = 1
    steps: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    codebook: Any = None           # a codebook scheme's table on [-1, 1]; then steps hold absmax
    codes: dict[str, Any] = field(default_factory=dict)   # weight name -> models.codes.Codes
    # unquantized tensor -> (file of the output folder, its copy there): a library's checkpoint
    # that already holds it, so the codes folder need not store it twice
    dense_sources: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def record_step(self, module: str, step, group_index) -> None:
        self.steps[module] = (step.detach().float().cpu().contiguous(),
                              group_index.detach().to(dtype=_int32()).cpu().contiguous())

    def record_codes(self, module: str, codes) -> None:
        """The codes the folder stores for `module`'s weight (relapse.models.codes); a weight
        without them is stored dense, with its recorded step as its grid."""
        self.codes[f"{module}.weight"] = codes


def _int32():
    import torch

    return torch.int32


class Quantizer:
    name: str = ""
    supported_bits: tuple[int, ...] = ()
    library: str = "torch"         # the distribution whose code does the quantizing
    is_identity: bool = False      # True: the weights are copied as they are
    needs_data: bool = False       # True: the stage passes the prepared data (calibration)
    devices: tuple[str, ...] = ("cpu", "cuda")   # where its kernels run (a CUDA-only one: cuda)
    settings_defaults: dict[str, Any] = {}

    def check_settings(self, settings: dict[str, Any], bits: int | None = None) -> None:
        """Raise ValueError naming the bad key; called at config validation, before any job."""
        unknown = set(settings) - set(self.settings_defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(self.settings_defaults)) or 'none'}")
        self.validate({**self.settings_defaults, **settings}, bits)

    def validate(self, settings: dict[str, Any], bits: int | None) -> None:
        """Scheme-specific value checks (override)."""

    def resolve(self, settings: dict[str, Any], bits: int | None = None) -> dict[str, Any]:
        self.check_settings(settings, bits)
        return {**self.settings_defaults, **settings}

    def library_version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        if self.library == "none":
            return None
        if self.library == "torch":
            import torch

            return torch.__version__
        try:
            return version(self.library)
        except PackageNotFoundError:
            return None

    def quantize(self, model, bits: int, settings: dict[str, Any], job: QuantJob) -> dict[str, Any]:
        raise NotImplementedError


def register_quantizer(cls):
    _QUANTIZERS[cls.name] = cls()
    return cls


_LOADED: list[bool] = []


def _load() -> None:
    # Once per process: the Snakefile asks for a quantizer per planned job, and scanning the
    # schemes folder each time was 5% of planning the paper's grid (benchmarks/planning.py).
    if _LOADED:
        return
    from relapse.quantize import schemes

    for info in pkgutil.iter_modules(schemes.__path__):
        importlib.import_module(f"{schemes.__name__}.{info.name}")
    _LOADED.append(True)


def quantizer_names() -> list[str]:
    _load()
    return sorted(_QUANTIZERS)


def get_quantizer(name: str) -> Quantizer:
    _load()
    if name not in _QUANTIZERS:
        raise KeyError(f"unknown quantization scheme {name!r}; known: {', '.join(sorted(_QUANTIZERS))}")
    return _QUANTIZERS[name]
