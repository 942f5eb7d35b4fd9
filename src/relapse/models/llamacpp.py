"""llama.cpp as an evaluation runtime: a GGUF file run by llama.cpp's own kernels, through
llama-cpp-python's C API, behind the two calls the evaluation makes of a transformers model: a
forward pass that returns every position's logits, and greedy `generate`
(`evaluation.kernels: native` for gguf cells; relapse.quantize.native builds the file).

Token ids go in as they are. The evaluation's tokenizer encodes and llama.cpp only computes, so
whatever differs between this path and the dequantized one is the kernels (llama.cpp's
q4_0 / q8_0 dot products quantize the activations to 8 bits; its KV cache is f16), never a
tokenizer.

Every row of a padded batch is a llama.cpp sequence of its own in one unified KV cache: its real
tokens sit at positions 0..n-1, which is what the attention mask and the position ids give in
transformers, so left and right padding both work. Several rows go into one llama_decode call,
and a prefix common to every prompt of a generate batch (KnowMem's few-shot examples) is decoded
once and shared across the sequences (llama_memory_seq_cp).

llama.cpp's extra CPU buffer types (weights repacked for its AVX-512 / AMX kernels) are off.
With them on, llama_decode segfaulted on this project's machines on every quantized file,
SmolLM2's own Q4_1 release included (the CPU advertises AMX); the plain ggml kernels compute the
same format.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from relapse.models.generation import shared_prefix_length

INSTALL_HINT = ("pip install -c constraints.txt -e '.[llamacpp]' (or `make setup-llamacpp`); it "
                "compiles llama.cpp from source, about 5 minutes on 2 cores")
_ALL_LAYERS = 0x7FFFFFFF          # n_gpu_layers meaning "every layer", as llama-cpp-python uses
_CONTEXT_STEP = 256               # contexts grow in steps, so a slightly longer batch reuses one
MAX_SEQUENCES = 256               # llama.cpp's LLAMA_MAX_SEQ: sequences one context can hold
_GROUP_ROWS = 64                  # rows scored together in one call
_log_callback = None              # the C callback must outlive every call into the library


def _library():
    try:
        import llama_cpp
    except ImportError:
        raise ImportError(f"llama.cpp's runtime needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


def _quiet(lib) -> None:
    """Route llama.cpp's log to stderr, errors only (it logs every tensor at load)."""
    global _log_callback
    if _log_callback is not None:
        return
    import sys

    error = 3                     # GGML_LOG_LEVEL_ERROR

    @lib.llama_log_callback
    def callback(level, text, user_data):
        if level == error:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _log_callback = callback
    lib.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCppRunner:
    """One GGUF model in llama.cpp, with a context that grows to the largest call so far."""

    def __init__(self, path: str | Path, threads: int = 1, gpu: bool = False,
                 batch_tokens: int = 512):
        lib = _library()
        _quiet(lib)
        if gpu and not lib.llama_supports_gpu_offload():
            raise RuntimeError(
                "device is cuda, but this llama-cpp-python was built without GPU offload; "
                "rebuild it with CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall "
                "--no-cache-dir llama-cpp-python")
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.use_extra_bufts = False
        params.n_gpu_layers = _ALL_LAYERS if gpu else 0
        self.lib, self.path, self.threads = lib, Path(path), threads
        self.batch_tokens = batch_tokens
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"{path}: llama.cpp could not load this GGUF file")
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.ctx, self.n_ctx, self.n_seq = None, 0, 0
        self.batch = lib.llama_batch_init(batch_tokens, 0, 1)
        self.info = {"runtime": "llama.cpp", "llama_cpp_python": lib.__version__,
                     "gpu_offload": gpu, "extra_buffer_types": False, "kv_cache": "f16",
                     "threads": threads, "batch_tokens": batch_tokens}

    def close(self) -> None:
        lib = self.lib
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lib.llama_batch_free(self.batch)
            lib.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:       # interpreter shutdown: the library may be gone already
            pass

    # --- context and decoding -----------------------------------------------------------------

    def _fresh_context(self, tokens: int, sequences: int) -> None:
        """An empty KV cache that holds `tokens` cells over `sequences` sequences."""
        lib = self.lib
        if self.ctx and tokens <= self.n_ctx and sequences <= self.n_seq:
            lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
            return
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        n_ctx = max(self.n_ctx, -(-tokens // _CONTEXT_STEP) * _CONTEXT_STEP)
        n_seq = max(self.n_seq, sequences)
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = self.batch_tokens
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"{self.path}: llama.cpp could not make a context of {n_ctx} "
                               f"tokens and {n_seq} sequences")
        self.n_ctx, self.n_seq = n_ctx, n_seq

    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> np.ndarray:
        """Decode (token, position, sequence, wants logits) items in calls of at most
        `batch_tokens`; the logits of the flagged items, in order: float32 [k, n_vocab]."""
        lib, batch, out = self.lib, self.batch, []
        for start in range(0, len(items), self.batch_tokens):
            chunk = items[start:start + self.batch_tokens]
            for j, (token, pos, seq, wanted) in enumerate(chunk):
                batch.token[j] = token
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = wanted
            batch.n_tokens = len(chunk)
            code = lib.llama_decode(self.ctx, batch)
            if code != 0:
                raise RuntimeError(f"{self.path}: llama_decode returned {code} for {len(chunk)} "
                                   f"tokens (context {self.n_ctx}, {self.n_seq} sequences)")
            wanted = sum(item[3] for item in chunk)
            if wanted:
                logits = np.ctypeslib.as_array(lib.llama_get_logits(self.ctx),
                                               shape=(wanted, self.n_vocab))
                out.append(logits.copy())
        return np.concatenate(out) if out else np.zeros((0, self.n_vocab), np.float32)

    # --- what the evaluation calls ------------------------------------------------------------

    def logits(self, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Every position's logits of each row (float32 [len(row), n_vocab]), each row alone in
        its own sequence. Rows are decoded together while they fit one call's tokens."""
        out: list[np.ndarray | None] = [None] * len(rows)
        group: list[int] = []

        def flush():
            if not group:
                return
            self._fresh_context(sum(len(rows[i]) for i in group), len(group))
            items = [(int(t), pos, seq, True) for seq, i in enumerate(group)
                     for pos, t in enumerate(rows[i])]
            logits = self._decode(items)
            at = 0
            for i in group:
                out[i] = logits[at:at + len(rows[i])]
                at += len(rows[i])
            group.clear()

        for i, row in enumerate(rows):
            if not len(row):
                raise ValueError("llama.cpp: a row has no tokens")
            if group and (len(group) == _GROUP_ROWS or sum(len(rows[j]) for j in group)
                          + len(row) > self.batch_tokens):
                flush()
            group.append(i)
        flush()
        return out  # type: ignore[return-value]

    def greedy(self, rows: Sequence[Sequence[int]], max_new_tokens: int, eos: set[int],
               finished: Callable[[list[list[int]]], list[bool]] | None = None
               ) -> list[list[int]]:
        """Greedy continuations of every row (argmax, first index on ties, as torch.argmax).
        A row stops after an EOS token, or once `finished(generated)` says so for it; the
        others go on up to `max_new_tokens`."""
        n = len(rows)
        if n > MAX_SEQUENCES:
            raise ValueError(f"llama.cpp generates at most {MAX_SEQUENCES} rows at once, got {n}; "
                             "lower evaluation.batch_size")
        shared = shared_prefix_length(rows) if n > 1 else 0
        self._fresh_context(sum(len(r) for r in rows) - (n - 1) * shared + n * max_new_tokens, n)
        lib = self.lib
        if shared:
            self._decode([(int(t), pos, 0, False) for pos, t in enumerate(rows[0][:shared])])
            memory = lib.llama_get_memory(self.ctx)
            for seq in range(1, n):
                lib.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        items = [(int(t), pos, seq, pos == len(row) - 1)
                 for seq, row in enumerate(rows) for pos, t in enumerate(row) if pos >= shared]
        last = self._decode(items)
        generated: list[list[int]] = [[] for _ in rows]
        active = list(range(n))
        for step in range(max_new_tokens):
            for seq, logits in zip(active, last):
                generated[seq].append(int(np.argmax(logits)))
            done = set(seq for seq in active if generated[seq][-1] in eos)
            if finished is not None:
                flags = finished(generated)
                done |= {seq for seq in active if flags[seq]}
            active = [seq for seq in active if seq not in done]
            if not active or step == max_new_tokens - 1:
                break
            last = self._decode([(generated[seq][-1], len(rows[seq]) + step, seq, True)
                                 for seq in active])
        return generated


def real_rows(input_ids, attention_mask) -> list[tuple[int, list[int]]]:
    """(start, token ids) of each row's real tokens: a contiguous run of ones in the mask, as
    left or right padding leaves it."""
    import torch

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    rows = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        where = [i for i, m in enumerate(mask) if m]
        if not where or where[-1] - where[0] + 1 != len(where):
            raise ValueError("llama.cpp runtime: each row's attention mask must be one "
                             "contiguous run of ones (left or right padding)")
        rows.append((where[0], ids[where[0]:where[-1] + 1]))
    return rows


class LlamaCppCausalLM:
    """A LlamaCppRunner behind the calls the evaluation makes of a transformers causal LM:
    `model(input_ids=, attention_mask=).logits` and greedy `model.generate(...)`. It has no
    weights in torch; `parameters()` yields one empty CPU tensor so that callers find the
    device their inputs go to."""

    # greedy_generate must not hand it a transformers KV cache: it shares prefixes itself.
    takes_past_key_values = False
    compute_dtype = "float32"      # activations; the weights stay in the file's format

    def __init__(self, runner: LlamaCppRunner, keep=None):
        import torch

        self.runner = runner
        self.info = runner.info
        self._keep = keep          # e.g. the temporary folder that holds the file
        self._anchor = torch.empty(0)

    def parameters(self):
        yield self._anchor

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        return self.forward(input_ids, attention_mask, **kwargs)

    def forward(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        import torch
        from transformers.modeling_outputs import CausalLMOutput

        if kwargs.get("past_key_values") is not None or kwargs.get("labels") is not None:
            raise ValueError("llama.cpp runtime: forward takes input_ids and attention_mask only")
        rows = real_rows(input_ids, attention_mask)
        logits = torch.zeros(*input_ids.shape, self.runner.n_vocab)
        for row, ((start, ids), values) in enumerate(zip(rows, self.runner.logits(
                [ids for _, ids in rows]))):
            logits[row, start:start + len(ids)] = torch.from_numpy(values)
        return CausalLMOutput(logits=logits)

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20,
                 do_sample: bool = False, num_beams: int = 1, pad_token_id=None,
                 eos_token_id=None, stopping_criteria=None, past_key_values=None,
                 use_cache: bool = True):
        """transformers' greedy generate: the prompt, then each row's new tokens, a finished
        row padded with `pad_token_id`; a row finishes at EOS or when `stopping_criteria`
        (called with the ids so far, as transformers does) says so."""
        import torch

        if do_sample or num_beams != 1 or past_key_values is not None:
            raise ValueError("llama.cpp runtime: greedy decoding only (do_sample=False, "
                             "num_beams=1, no past_key_values)")
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [])
        pad = pad_token_id if pad_token_id is not None else next(iter(eos), 0)

        def grid(generated):
            width = max((len(g) for g in generated), default=0)
            new = torch.full((len(generated), width), pad, dtype=input_ids.dtype)
            for row, tokens in enumerate(generated):
                new[row, :len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
            return torch.cat([input_ids.cpu(), new], dim=1)

        finished = None
        if stopping_criteria:
            def finished(generated):
                flags = stopping_criteria(grid(generated), None)
                return [bool(f) for f in flags.tolist()]

        rows = [ids for _, ids in real_rows(input_ids, attention_mask)]
        return grid(self.runner.greedy(rows, max_new_tokens, eos, finished))
