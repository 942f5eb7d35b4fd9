"""A quantized cell stored as codes (DESIGN §7, docs/quantization.md "On disk").

A quantize-stage folder holds `model.codes.safetensors` and `quant_codes.json` instead of
dequantized fp32 weights: per quantized weight its integer codes (packed, relapse.models.packing)
and what maps them back to numbers (scales, zero points, a codebook, a library's block bytes);
every other tensor (embeddings, norms, an unquantized lm_head) as it is, in bf16 or fp16 where
that holds its float32 values exactly (`narrowed`). `quant_codes.json` says
the format version and each tensor's layout. Loading decodes each weight with the arithmetic
that produced its dequantized values, in float32, so the model the evaluation sees equals
the one the quantizer computed (the quantize stage checks that tensor by tensor before it writes;
a weight that would not come back equal is stored dense instead, and the layout says so).

Kinds (the `kind` of a layout entry):
- `rtn`: integer codes of `bits` bits per group of `group` input columns, fp32 `scale`
  [out, groups] and, asymmetric, the zero point (packed like the codes); a symmetric code is
  stored offset by 2^(bits−1). w = (code − zero)·scale, as relapse.quantize.rtn computes it.
- `int8_rowwise`: LLM.int8's int8 codes and fp32 row absmax; w = code·(absmax/127).
- `codebook4`: bitsandbytes' own packed 4-bit bytes (fp4/nf4 codes, two a byte) over the
  row-major flattened weight cut in blocks of `blocksize`, the block absmax (fp32, after double
  quantization if any) and the 16-value codebook; w = codebook[code]·absmax, as its kernels do.
- `gguf`: llama.cpp's block bytes of the `type` (fp16 scale, packed codes), decoded by the
  `gguf` package's own dequantizer, which is what produced the weights (q8_0, q4_0 and q4_1 by
  the same float32 operations in torch: checked bit for bit against it, like every kind).
- `gptq`, `awq`: GPTQModel's packed checkpoint (`native/`, deployable as it is) read in place:
  the entry names its `file` there and the `keys` of its int32 `qweight` and `qzeros`, its
  `scales` (and gptq's `g_idx`), so no byte is stored twice. w = scale·(code − zero) rounded to
  the scales' dtype (fp16), as GPTQModel's own dequantization computes it in that dtype; gptq's
  zero points in its v1 checkpoint format are stored minus one and read back as the library does.
A dense weight may carry its quantization grid (the layout's `grids`: tensors
`{name}.grid_step` [out, groups] and `{name}.grid_group_index` [in]) where no codes give it.

Folders from before this format (dequantized `model.safetensors` beside
`quant_steps.safetensors`) are refused with a "re-quantize" error (`check_not_legacy`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CODES_FILE = "model.codes.safetensors"
CODES_JSON = "quant_codes.json"
FORMAT = "relapse-quant-codes"
VERSION = 1
LEGACY_STEPS_FILE = "quant_steps.safetensors"
NATIVE_DIR = "native"          # GPTQModel's packed checkpoint (relapse.quantize.gptqmodel_backend)
KINDS = ("rtn", "int8_rowwise", "codebook4", "gguf", "gptq", "awq")
# AWQ's GEMM packing puts output column AWQ_ORDER[k] of each 8 in nibble k of a word
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


class Codes:
    """One weight's codes: its kind, the JSON-able layout fields and the tensors (by suffix).
    `file` and `keys` (suffix -> tensor name): the tensors already sit in that file of the
    folder (a library's own checkpoint), and the layout points there instead of copying them."""

    def __init__(self, kind: str, meta: dict[str, Any], tensors: dict[str, Any],
                 file: str | None = None, keys: dict[str, str] | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown code kind {kind!r}; known: {', '.join(KINDS)}")
        if (file is None) != (keys is None):
            raise ValueError("codes stored elsewhere need both their file and their keys")
        self.kind, self.meta, self.tensors = kind, meta, tensors
        self.file, self.keys = file, keys

    def decode(self):
        return decode(self.kind, self.meta, self.tensors)


def rtn_codes(codes, scale, zero, bits: int, group: int, symmetric: bool, shape) -> Codes:
    """From relapse.quantize.rtn's float codes [rows, groups, group], scale and zero [.., 1]."""
    import torch

    offset = 2 ** (bits - 1) if symmetric else 0
    from relapse.models.packing import pack_bits

    tensors = {"codes": pack_bits((codes + offset).to(torch.int16), bits),
               "scale": scale.reshape(scale.shape[0], -1).float().contiguous()}
    if not symmetric:
        tensors["zero"] = pack_bits(zero.to(torch.int16), bits)
    return Codes("rtn", {"shape": list(shape), "bits": bits, "group": group,
                         "symmetric": symmetric}, tensors)


def decode(kind: str, meta: dict, t: dict):
    """The float32 weight [out, in] of one layout entry."""
    import torch

    from relapse.models.packing import unpack_bits, unpack_float

    rows, cols = meta["shape"]
    if kind == "rtn":
        bits, g = meta["bits"], meta["group"]
        groups = cols // g
        codes = unpack_float(t["codes"], bits, rows * cols).reshape(rows, groups, g)
        scale = t["scale"].reshape(rows, groups, 1)
        # In place, the same float32 operations as (codes − zero)·scale, without temporaries.
        if meta["symmetric"]:
            # codes − 2^(b−1) is exact in float32, and the zero point of a symmetric grid is 0
            codes.sub_(2 ** (bits - 1))
        else:
            codes.sub_(unpack_bits(t["zero"], bits, rows * groups).reshape(rows, groups, 1)
                       .float())
        return codes.mul_(scale).reshape(rows, cols)
    if kind == "int8_rowwise":
        return t["codes"].float().mul_(t["absmax"].float()[:, None] / 127.0)
    if kind == "codebook4":
        block = meta["blocksize"]
        n = rows * cols
        padded = n + (-n) % block
        if t["codes"].numel() * 2 != padded:
            raise ValueError(f"{t['codes'].numel()} packed bytes do not hold {padded} codes")
        # one gather from a table of the 256 byte values' (high, low) pairs: the same numbers
        # as codebook[code] per code, without unpacking to one int64 index per weight first
        book = t["codebook"].float()
        pairs = torch.stack([book.repeat_interleave(16), book.repeat(16)], dim=1)
        values = torch.index_select(pairs, 0, t["codes"].int()).view(-1, block)
        values.mul_(t["absmax"].view(-1, 1))
        return values.reshape(-1)[:n].reshape(rows, cols)
    if kind == "gguf":
        if meta["type"].lower() in _GGUF_IN_TORCH:
            return _decode_gguf_blocks(meta["type"].lower(), t["codes"], rows, cols)
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        values = dequantize(t["codes"].numpy(), GGMLQuantizationType[meta["type"].upper()])
        return torch.from_numpy(values.reshape(rows, cols)).float()
    if kind == "gptq":
        return _decode_gptq(meta, t)
    if kind == "awq":
        return _decode_awq(meta, t)
    raise ValueError(f"unknown code kind {kind!r}")


# llama.cpp block types decoded here with the `gguf` package's own float32 operations, in the
# same order (its numpy code is 3-5x slower); block bytes, 32 weights a block
_GGUF_IN_TORCH = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


def _decode_gguf_blocks(type_name: str, raw, rows: int, cols: int):
    """q8_0: d·x (x int8); q4_0: d·(q − 8); q4_1: d·q + m, with d and m the block's fp16
    values in float32 and q its 16 low nibbles, then its 16 high nibbles."""
    import torch

    blocks = raw.reshape(-1, _GGUF_IN_TORCH[type_name])
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    if type_name == "q8_0":
        values = blocks[:, 2:].contiguous().view(torch.int8).float().mul_(d)
    else:
        packed = blocks[:, 4:] if type_name == "q4_1" else blocks[:, 2:]
        codes = torch.cat([packed & 0x0F, packed >> 4], dim=1)
        if type_name == "q4_0":
            values = (codes.to(torch.int8) - 8).float().mul_(d)
        else:
            m = blocks[:, 2:4].contiguous().view(torch.float16).float()
            values = codes.float().mul_(d).add_(m)
    return values.reshape(rows, cols)


def _v1_zero_words(qzeros, bits: int):
    """GPTQ v1 checkpoints store each zero point minus one; GPTQModel adds the one back to the
    whole int32 word (carries included) for 2, 4 and 8 bits, so a borrow made when saving is
    undone exactly. The same here, in int64, wrapped back to int32."""
    import torch

    step = sum(1 << (bits * i) for i in range(32 // bits))
    words = (qzeros.to(torch.int64) + step) & 0xFFFFFFFF
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _gptq_zeros(meta: dict, qzeros, count: int):
    from relapse.models.packing import unpack_words

    bits = meta["bits"]
    if meta["zero_format"] == "v2":
        return unpack_words(qzeros, bits, count)
    if 32 % bits == 0:
        return unpack_words(_v1_zero_words(qzeros, bits), bits, count)
    # 3 bits: a zero point can straddle two words; GPTQModel shifts each decoded field instead
    return (unpack_words(qzeros, bits, count) + 1) & (2 ** bits - 1)


def _times_scale(diff, scales, dtype_name: str):
    """scale·(code − zero) in float32 (exact: an fp16/bf16 scale times an integer below 2^9),
    rounded once to the scales' dtype: the product GPTQModel computes in that dtype."""
    import torch

    return diff.float().mul_(scales.float()).to(getattr(torch, dtype_name)).float()


def _decode_gptq(meta: dict, t: dict):
    """GPTQ's layout: qweight [in·bits/32, out] packs the input axis, qzeros [groups,
    out·bits/32] the output axis, scales [groups, out], g_idx [in] the group of each column."""
    from relapse.models.packing import unpack_words

    rows, cols = meta["shape"]
    codes = unpack_words(t["qweight"].T, meta["bits"], cols)          # [out, in]
    zeros = _gptq_zeros(meta, t["qzeros"], rows).T                    # [out, groups]
    group = t["g_idx"].long()
    return _times_scale(codes - zeros[:, group], t["scales"].T[:, group], meta["scale_dtype"])


def _decode_awq(meta: dict, t: dict):
    """AWQ's GEMM layout: qweight [in, out/8] and qzeros [groups, out/8] pack the output axis
    in AWQ_ORDER, scales [groups, out]; groups of `group` consecutive input columns."""
    import torch

    from relapse.models.packing import unpack_words

    rows, cols = meta["shape"]
    if meta["bits"] != 4:
        raise ValueError(f"awq codes of {meta['bits']} bits: GPTQModel's AWQ packs 4")
    inverse = torch.argsort(torch.tensor(AWQ_ORDER))

    def unpacked(words):
        codes = unpack_words(words, 4, words.shape[1] * 8)
        return codes.view(codes.shape[0], -1, 8)[..., inverse].reshape(codes.shape[0], -1)

    codes, zeros = unpacked(t["qweight"]), unpacked(t["qzeros"])      # [in, out], [groups, out]
    groups = zeros.shape[0]
    diff = codes.view(groups, cols // groups, rows) - zeros[:, None, :]
    value = _times_scale(diff, t["scales"][:, None, :], meta["scale_dtype"])
    return value.reshape(cols, rows).T.contiguous()


def is_codes_folder(path: str | Path) -> bool:
    return (Path(path) / CODES_JSON).exists()


def check_not_legacy(path: str | Path) -> None:
    """Refuse a quantize-stage folder written before codes: its weights are dequantized fp32
    and its grid sits in quant_steps.safetensors, which nothing reads any more."""
    path = Path(path)
    if (path / LEGACY_STEPS_FILE).exists() and not is_codes_folder(path):
        raise ValueError(
            f"{path}: a quantized folder in the format before codes (dequantized weights and "
            f"{LEGACY_STEPS_FILE}, no {CODES_JSON}); re-quantize it: delete the folder and rerun "
            "the rule that writes it (snakemake reruns the quantize job)")


def read_layout(path: str | Path) -> dict:
    path = Path(path)
    layout = json.loads((path / CODES_JSON).read_text())
    if layout.get("format") != FORMAT or layout.get("version") != VERSION:
        raise ValueError(f"{path / CODES_JSON}: format {layout.get('format')!r} version "
                         f"{layout.get('version')!r}; this relapse reads {FORMAT} version "
                         f"{VERSION}: re-quantize the folder")
    if "dense_in" not in layout and (path / NATIVE_DIR).is_dir():
        # gptq/awq before their codes: dense Linear weights that GPTQModel's CPU loader had
        # dequantized in bf16, every fp16 scale rounded (relapse.quantize.gptqmodel_backend)
        raise ValueError(f"{path}: a gptq/awq folder from before their codes (dense weights "
                         f"dequantized with bf16-rounded scales beside {NATIVE_DIR}/); "
                         "re-quantize it: delete the folder and rerun the rule that writes it "
                         "(snakemake reruns the quantize job)")
    return layout


class CodeFiles:
    """The safetensors files a codes folder reads, each opened once."""

    def __init__(self, path: Path, layout: dict):
        self.path, self.layout, self.handles = path, layout, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handles.clear()

    def handle(self, file: str | None = None):
        from safetensors import safe_open

        file = file or self.layout["file"]
        if file not in self.handles:
            if not (self.path / file).exists():
                raise FileNotFoundError(f"{self.path / file}: missing, and {self.path / CODES_JSON} "
                                        "reads codes from it; re-quantize the folder")
            self.handles[file] = safe_open(str(self.path / file), framework="pt")
        return self.handles[file]

    def entry_tensors(self, name: str, entry: dict) -> dict:
        if "file" in entry:                # in place in a library's checkpoint
            handle = self.handle(entry["file"])
            return {suffix: handle.get_tensor(key) for suffix, key in entry["keys"].items()}
        handle, prefix = self.handle(), name + "."
        return {k[len(prefix):]: handle.get_tensor(k) for k in entry["keys"]}


def referenced_files(layout: dict) -> list[str]:
    """Files of the folder, besides the layout's own, that its codes are read from."""
    return sorted({e["file"] for e in layout["tensors"].values() if "file" in e}
                  | set(layout.get("dense_in", {}).values()))


def decode_tensors(path: str | Path, names=None) -> dict:
    """name -> float32 (dense tensors: as stored) weights of a codes folder; `names` limits it
    to those (the survival diagnostics read only the quantized Linear weights)."""
    path = Path(path)
    layout = read_layout(path)
    wanted = set(names) if names is not None else None
    out = {}
    with CodeFiles(path, layout) as files:
        dense_in = layout.get("dense_in", {})
        for name in layout["dense"]:
            if wanted is None or name in wanted:
                out[name] = files.handle(dense_in.get(name)).get_tensor(name)
                if name in layout["narrowed"] or name in dense_in:
                    out[name] = out[name].float()
        for name, entry in layout["tensors"].items():
            if wanted is None or name in wanted:
                out[name] = decode(entry["kind"], entry, files.entry_tensors(name, entry))
    if wanted is not None and wanted - set(out):
        raise KeyError(f"{path}: no tensor(s) {', '.join(sorted(wanted - set(out)))}")
    return out


def read_entry(path: str | Path, name: str) -> tuple[dict, dict]:
    """(layout entry, its raw tensors) of one quantized weight, e.g. for its grid."""
    path = Path(path)
    layout = read_layout(path)
    entry = layout["tensors"][name]
    with CodeFiles(path, layout) as files:
        return entry, files.entry_tensors(name, entry)


def _bitwise_equal(a, b) -> bool:
    """Same values and dtype (torch.equal; an exact zero's sign aside, which no sum sees)."""
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _narrowed(value, name: str, narrowed: dict):
    """A float32 tensor in bf16 or fp16 where that holds every value exactly (an embedding
    untouched since a bf16 or fp16 release, say): half the bytes, the same numbers back."""
    import torch

    if value.dtype == torch.float32:
        for dtype in (torch.bfloat16, torch.float16):
            small = value.to(dtype)
            if torch.equal(small.float(), value):
                narrowed[name] = str(dtype).removeprefix("torch.")
                return small.contiguous()
    return value.contiguous()


def save_codes_folder(model, out_dir: str | Path, codes: dict[str, Codes],
                      grids: dict[str, tuple[Any, Any]] | None = None, codebook=None,
                      dense_sources: dict[str, tuple[str, Any]] | None = None) -> dict:
    """Write `model` (its weights already the dequantized values) as a codes folder: `codes`
    maps a weight's state-dict name to its Codes; `grids` maps a module to (step or block
    absmax, group_index) for quantized weights whose grid the codes do not give (`codebook`:
    a codebook scheme's table, stored with them); `dense_sources` maps an unquantized tensor to
    (file of the folder, its copy there), read from there instead of stored again where that
    copy holds exactly its values (`dense_in`). Returns the layout."""
    import torch
    from safetensors.torch import save_file

    from relapse.io import write_json
    from relapse.models.io import seal_weights

    out_dir = Path(out_dir)
    grids, dense_sources = grids or {}, dense_sources or {}
    tensors, entries, explicit, dense, fallback, seen = {}, {}, {}, [], [], set()
    dense_in: dict[str, str] = {}
    narrowed: dict[str, str] = {}
    for name, value in model.state_dict().items():
        if value.data_ptr() in seen:            # a tied weight (lm_head = embeddings): once
            continue
        seen.add(value.data_ptr())
        value = value.detach().cpu()
        entry = codes.get(name)
        if entry is not None and (value.dtype != torch.float32
                                  or not _bitwise_equal(entry.decode(), value)):
            fallback.append(name)
            entry = None
        module = name.removesuffix(".weight")
        if entry is None:
            dense.append(name)
            source = dense_sources.get(name)
            if (source is not None and value.dtype == torch.float32 and name not in grids
                    and _bitwise_equal(source[1].float(), value)):
                dense_in[name] = source[0]
                continue
            tensors[name] = _narrowed(value, name, narrowed)
            if module in grids and name.endswith(".weight"):
                step, group_index = grids[module]
                tensors[f"{name}.grid_step"] = step.float().contiguous()
                tensors[f"{name}.grid_group_index"] = group_index.to(torch.int32).contiguous()
                explicit[name] = [f"{name}.grid_step", f"{name}.grid_group_index"]
            continue
        if entry.file is not None:
            entries[name] = {"kind": entry.kind, **entry.meta, "file": entry.file,
                             "keys": dict(entry.keys)}
            continue
        keys = []
        for suffix, tensor in entry.tensors.items():
            tensors[f"{name}.{suffix}"] = tensor.contiguous()
            keys.append(f"{name}.{suffix}")
        entries[name] = {"kind": entry.kind, **entry.meta, "keys": keys}
    if explicit and codebook is not None:
        tensors["grid_codebook"] = codebook.detach().float().cpu().contiguous()
    if fallback:
        print(f"[quantize] note: {len(fallback)} weight(s) did not decode to exactly the "
              f"quantized values and are stored dense: {', '.join(fallback[:5])}", flush=True)
    save_file(tensors, str(out_dir / CODES_FILE), metadata={"format": "pt"})
    layout = {"format": FORMAT, "version": VERSION, "file": CODES_FILE, "tensors": entries,
              "dense": dense, "narrowed": narrowed, "grids": explicit, "stored_dense": fallback,
              "dense_in": dense_in}
    write_json(out_dir / CODES_JSON, layout)
    model.config.save_pretrained(str(out_dir))
    if model.can_generate():
        model.generation_config.save_pretrained(str(out_dir))
    seal_weights(out_dir, extra=referenced_files(layout))
    return layout


def load_codes_model(path: str | Path, device: str = "cpu", dtype: str = "float32",
                     trust_remote_code: bool = False):
    """The model of a codes folder: its decoded float32 weights loaded by transformers exactly
    as a folder of those weights would be (cast to `dtype` the same way)."""
    import torch
    from transformers import AutoConfig, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = Path(path)
    state = decode_tensors(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    kwargs = {}
    if (path / "generation_config.json").exists():
        kwargs["generation_config"] = GenerationConfig.from_pretrained(str(path))
    # The class AutoModelForCausalLM would pick; it takes no state_dict with a folder.
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
        None, config=config, state_dict=state, dtype=getattr(torch, dtype), **kwargs)
    model.config.name_or_path = model.name_or_path = str(path)   # as a load from the folder
    return model.to(device).eval()
