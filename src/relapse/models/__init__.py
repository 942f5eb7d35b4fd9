"""Tokenizer, tiny Llama, model IO (safetensors only) and reference-model training; GGUF loading
(gguf.py); what a model's modules are and which weights a run trains (modules.py); batched greedy
generation (generation.py); the non-finite loss guard (guard.py); per-token and per-sequence losses on logits (losses.py: the
objectives, relearning and the Fisher diagnostic use them); the one optimizer loop every
training run steps through (training.py); the world-fact probe of a
pretrained base (world.py). Models import data and the top-level helpers, nothing above."""
