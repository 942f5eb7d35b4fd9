"""One call seeds every random source a job touches, so the same config gives the same numbers."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int, threads: int | None = None) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)          # the CPU generator and every CUDA device's
    if os.environ.get("RELAPSE_DETERMINISTIC", "") not in ("", "0"):
        # Bitwise-repeatable GPU runs (docs/reliability.md, Determinism): cuBLAS needs a fixed workspace,
        # set before its first call; an op without a deterministic kernel then raises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if threads:
        # Measured here: on 2 busy cores one thread per job is ~3x faster than two, and Snakemake
        # runs jobs side by side, so a job uses exactly the threads its rule declares.
        torch.set_num_threads(threads)
