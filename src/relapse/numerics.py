"""CPU numerics pinned (config `numerics`), so that one config gives bit-identical numbers on
any x86-64 CPU, Intel or AMD.

PyTorch picks its CPU kernels at run time from the CPU's instruction set (ATen: avx512, avx2 or
the default build), and MKL picks a code branch per CPU; the same code then rounds differently
on two machines (DESIGN 13: measured logits and gradients of a small Llama differ). `portable`
fixes both to the one branch that every x86-64 CPU runs alike:

- `ATEN_CPU_CAPABILITY=default`: ATen's kernels built for the baseline x86-64 instruction set.
  `avx2` would not do: a CPU without AVX2 silently falls back to another kernel.
- `MKL_CBWR=COMPATIBLE`: the only conditional-numerical-reproducibility branch that Intel's MKL
  documents as giving the same results on Intel and non-Intel CPUs (SSE2 without the approximate
  rcpps/rsqrtps). Any other branch (AVX2, AVX512) applies to Intel CPUs only: elsewhere MKL
  silently uses its AUTO branch, which is why `MKL_CBWR=AVX2` equals no setting on an AMD EPYC.

MKL also asks for a fixed thread count: each job uses exactly its rule's threads
(relapse.seeding). Both variables are read once, when torch first dispatches a kernel and MKL
first runs, so they must be in a job's environment before it starts: the workflow sets them
while it parses the Snakefile (workflow/rules/common.smk), which every local job inherits and
every SLURM job repeats. The speed cost is measured in benchmarks/portable_numerics.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
MODES = ("portable", "native")


def environment(mode: str) -> dict[str, str]:
    """The variables a job's environment gets under `numerics: mode`; `native` sets none and
    leaves whatever the user's environment has."""
    if mode not in MODES:
        raise ValueError(f"numerics: {mode!r}; allowed: {', '.join(MODES)}")
    return dict(PORTABLE) if mode == "portable" else {}


def pin(mode: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Put `mode`'s variables into `environ` (this process's environment by default)."""
    (os.environ if environ is None else environ).update(environment(mode))


def recorded() -> dict:
    """What provenance records: the variables as this job saw them (None: unset) and, when torch
    is loaded, the kernel set ATen actually dispatches to (a CPU without it falls back)."""
    out = {name: os.environ.get(name) for name in PORTABLE}
    if "torch" in sys.modules:
        out["aten_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return out
