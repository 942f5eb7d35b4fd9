"""What every output file carries so that its numbers can be reproduced."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from relapse import numerics

_PACKAGES = ("relapse", "torch", "transformers", "peft", "tokenizers", "numpy", "pyarrow",
             "snakemake", "rouge-score", "bitsandbytes", "gptqmodel", "gguf", "llama-cpp-python")


def config_hash(cfg: dict) -> str:
    """A short stable hash of a (sub-)config: the same settings give the same hash."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(cfg: dict | None = None, **extra) -> dict:
    """The metadata block written into every Parquet file and manifest."""
    out = {"versions": package_versions(), "git_commit": git_commit(),
           "numerics": numerics.recorded()}
    if cfg is not None:
        out["config_hash"] = config_hash(cfg)
        out["config"] = cfg
    out.update(extra)
    return out
