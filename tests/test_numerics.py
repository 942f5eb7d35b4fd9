"""Portable CPU numerics (config `numerics`, relapse.numerics): the pin makes a training step
and an evaluation bit-identical across CPU kernel sets, the workflow puts it into every job,
and provenance records it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relapse import numerics

ROOT = Path(__file__).resolve().parents[1]

# One optimizer step of a Llama of the default's size and an evaluation of the stepped model:
# matmuls (MKL), RMSNorm, softmax, SiLU and AdamW's elementwise kernels (ATen). Prints the kernel
# set ATen dispatched to and a hash of every logit, gradient and updated weight.
STEP = r"""
import hashlib, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.set_num_threads(1)
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(
    vocab_size=1024, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
ids = torch.randint(0, 1024, (4, 48))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
out = model(input_ids=ids, labels=ids)
out.loss.backward()
opt.step()
digest = hashlib.sha256(out.logits.detach().numpy().tobytes())
for p in model.parameters():
    digest.update(p.grad.numpy().tobytes())
    digest.update(p.detach().numpy().tobytes())
with torch.no_grad():
    digest.update(model(input_ids=ids.flip(0)).logits.numpy().tobytes())
print(torch.backends.cpu.get_cpu_capability(), digest.hexdigest())
"""

PINNED = tuple(numerics.PORTABLE)


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in PINNED and k != "MKL_ENABLE_INSTRUCTIONS"}
    return {**env, **extra}


def _step(cpu: dict[str, str], mode: str) -> tuple[str, str]:
    """The step on a simulated CPU (its environment) with `numerics: mode` applied on top, as
    the workflow applies it to every job."""
    env = _clean_env(**cpu)
    numerics.pin(mode, env)
    proc = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    capability, digest = proc.stdout.split()[-2:]
    return capability, digest


# Two CPUs simulated on one: this CPU's best kernels, and the same CPU capped at AVX2 (ATen's
# kernel set and MKL's instructions), as a CPU without AVX-512 would run.
AVX2_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.fixture(scope="module")
def best_capability():
    capability, _ = _step({}, "native")
    if capability not in ("AVX512", "ZVECTOR") and not capability.startswith("AVX512"):
        pytest.skip(f"this CPU's best ATen kernel set is {capability}: no second set above "
                    "AVX2 to compare with (needs AVX-512)")
    return capability


def test_portable_numerics_are_bit_identical_across_kernel_sets(best_capability):
    native = {name: _step(cpu, "native")
              for name, cpu in (("best", {}), ("avx2", AVX2_CPU))}
    # The control: without the pin the two simulated CPUs round differently (DESIGN 13), so the
    # comparison below has the power to see a difference.
    assert native["best"][0] == best_capability and native["avx2"][0] == "AVX2"
    assert native["best"][1] != native["avx2"][1]

    portable = {name: _step(cpu, "portable")
                for name, cpu in (("best", {}), ("avx2", AVX2_CPU))}
    assert portable["best"] == portable["avx2"]
    assert portable["best"][0] == "DEFAULT"


def test_environment_per_mode():
    assert numerics.environment("portable") == {"ATEN_CPU_CAPABILITY": "default",
                                                "MKL_CBWR": "COMPATIBLE"}
    assert numerics.environment("native") == {}
    with pytest.raises(ValueError, match="allowed: portable, native"):
        numerics.environment("fast")
    env = {"ATEN_CPU_CAPABILITY": "avx512", "OTHER": "1"}
    numerics.pin("portable", env)
    assert env == {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OTHER": "1"}
    env = {"ATEN_CPU_CAPABILITY": "avx512"}
    numerics.pin("native", env)
    assert env == {"ATEN_CPU_CAPABILITY": "avx512"}     # native leaves the user's setting


def test_provenance_records_the_jobs_numerics(monkeypatch):
    from relapse.provenance import provenance

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    recorded = provenance({})["numerics"]
    assert recorded["ATEN_CPU_CAPABILITY"] == "default" and recorded["MKL_CBWR"] is None
    if "torch" in sys.modules:      # the kernel set this process dispatches to, whatever was asked
        assert recorded["aten_capability"] == sys.modules["torch"].backends.cpu.get_cpu_capability()


def test_the_default_config_is_portable_and_a_bad_value_is_named(default_config):
    from relapse.config import ConfigError, validate

    assert default_config["numerics"] == "portable"
    cfg = {**default_config, "numerics": "fast"}
    with pytest.raises(ConfigError, match="numerics"):
        validate(cfg)


@pytest.mark.parametrize("mode", ["portable", "native"])
def test_the_workflow_sets_numerics_in_its_jobs(tmp_path, mode):
    """A real job (the data stage of tests/data/small.yaml) run by Snakemake from a shell where
    neither variable is set: its provenance shows what its environment had."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--cores", "1", "results/small/data",
         "--configfile", str(ROOT / "tests" / "data" / "small.yaml"),
         "--config", f"numerics={mode}"],
        env=_clean_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((tmp_path / "results" / "small" / "data" / "manifest.json").read_text())
    expected = {name: numerics.PORTABLE[name] if mode == "portable" else None for name in PINNED}
    assert {name: manifest["numerics"][name] for name in PINNED} == expected
