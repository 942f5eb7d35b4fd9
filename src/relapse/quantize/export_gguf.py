"""GGUF out: write any model folder of the grid (a reference, an unlearned or a quantized model)
as a llama.cpp / ollama GGUF file (`relapse export-gguf`). A model loaded from GGUF
(relapse.models.gguf) keeps its GGUF tokenizer fields in `gguf_tokenizer.json`, written back here
verbatim; other folders get fields built from their byte-level BPE tokenizer.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relapse.models.gguf import GGUF_TOKENIZER

# llama.cpp's file_type codes (gguf.LlamaFileType) of the types export_gguf writes.
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}


def _permute_rows(weight, heads: int):
    """llama.cpp's row order of a q/k projection: within each head, the rotary halves
    (transformers' rotate_half layout) become interleaved pairs (GGUF's layout). transformers'
    GGUF loader applies the inverse."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tokenizer_fields_from_hf(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """GGUF tokenizer fields of a byte-level BPE tokenizer.json (e.g. the tokenizer trained
    here), for model folders that did not come from a GGUF file. The pre-tokenizer is written as
    llama.cpp's `default`, which may split text differently from the original."""
    import json

    from relapse.models.tokenizer import load_tokenizer

    spec = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{model_dir}: export-gguf writes byte-level BPE tokenizers only, "
                         f"not {model.get('type')}")
    vocab = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    types = [3 if t in special else 1 for t in tokens]        # 3: control, 1: normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tok = load_tokenizer(model_dir)
    ids = tok("a")["input_ids"]

    def u32(v):
        return {"types": ["UINT32"], "value": int(v)}

    fields = {
        "tokenizer.ggml.model": {"types": ["STRING"], "value": "gpt2"},
        "tokenizer.ggml.pre": {"types": ["STRING"], "value": "default"},
        "tokenizer.ggml.tokens": {"types": ["ARRAY", "STRING"], "value": tokens},
        "tokenizer.ggml.token_type": {"types": ["ARRAY", "INT32"], "value": types},
        "tokenizer.ggml.merges": {"types": ["ARRAY", "STRING"], "value": merges},
        "tokenizer.ggml.add_bos_token": {"types": ["BOOL"],
                                         "value": bool(ids) and ids[0] == tok.bos_token_id},
    }
    for key, value in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id),
                       ("unknown", tok.unk_token_id), ("padding", tok.pad_token_id)):
        if value is not None:
            fields[f"tokenizer.ggml.{key}_token_id"] = u32(value)
    if getattr(tok, "chat_template", None):
        fields["tokenizer.chat_template"] = {"types": ["STRING"], "value": tok.chat_template}
    return fields


def _write_fields(writer, fields: dict[str, dict[str, Any]]) -> None:
    from gguf import GGUFValueType

    for key, field in fields.items():
        types = [GGUFValueType[t] for t in field["types"]]
        writer.add_key_value(key, field["value"], types[0],
                             sub_type=types[1] if len(types) > 1 else None)


def export_gguf(model_dir: str | Path, out_file: str | Path, type_name: str,
                float_type: str = "f32") -> dict:
    """Write the model folder `model_dir` (any model of the grid: a reference, an unlearned or a
    quantized one) as a llama.cpp GGUF file. Decoder Linear weights (and the embeddings / output
    head when the folder's quant manifest quantized them) are written at `type_name`; other 2-D
    tensors at `float_type`, norms in f32. A folder quantized by the `gguf` scheme at the same
    type is written exactly: re-quantizing its weights gives the same codes."""
    import numpy as np
    from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, MODEL_ARCH
    from gguf import get_tensor_name_map

    from relapse.io import atomic_file, read_json
    from relapse.models.io import load_model, read_manifest
    from relapse.models.modules import decoder_linear_names
    from relapse.quantize.gguf import GGUF_TYPES, quantize_array

    model_dir = Path(model_dir)
    if type_name not in GGUF_TYPES and type_name not in FILE_TYPES:
        raise ValueError(f"export-gguf: type {type_name!r} is unknown; allowed: "
                         f"{', '.join(FILE_TYPES)}")
    if float_type not in ("f32", "f16"):
        raise ValueError(f"export-gguf: float type {float_type!r}: allowed f32, f16")
    from relapse.models.adapter import is_adapter_checkpoint

    if (model_dir / "adapter").is_dir() and not any(model_dir.glob("model*.safetensors")) \
            and not is_adapter_checkpoint(model_dir):      # a LoRA checkpoint merges on load
        raise ValueError(f"{model_dir} holds an adapter without merged weights; export a merged "
                         "model (quantization.lora_merge: merged)")
    quant = read_manifest(model_dir, "quant_manifest.json")
    if quant.get("lora_merge") == "adapter" and (model_dir / "adapter").is_dir():
        raise ValueError(f"{model_dir}: quantized with lora_merge: adapter (a quantized base plus "
                         "a full-precision adapter), which one GGUF file cannot hold")
    notes = []
    if quant and quant.get("scheme") not in (None, "none"):
        measured = quant.get("settings", {}).get("type") if quant["scheme"] == "gguf" else None
        if measured != type_name:
            notes.append(f"{model_dir} was measured as {quant['scheme']}-w{quant['bits']}"
                         f"{f' ({measured})' if measured else ''}; writing it at {type_name} "
                         "re-quantizes it, so llama.cpp will not run exactly the measured weights")
    model = load_model(model_dir)
    config = model.config
    if config.model_type != "llama":
        raise ValueError(f"export-gguf: model type {config.model_type!r}; only llama is supported")
    fields_file = model_dir / GGUF_TOKENIZER
    fields = read_json(fields_file) if fields_file.exists() else tokenizer_fields_from_hf(model_dir)

    settings = quant.get("settings", {}) if quant else {}
    quantized = set(decoder_linear_names(model))
    by_module = {module: name for name, module in model.named_modules()}
    if settings.get("embeddings"):
        quantized.add(by_module[model.get_input_embeddings()])
    if settings.get("lm_head") and not config.tie_word_embeddings:
        quantized.add(by_module[model.get_output_embeddings()])
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"export-gguf: rope_type {rope.get('rope_type')!r} is not supported")

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    quant_type = type_name if type_name in GGUF_TYPES else None
    counts: dict[str, int] = {}
    with atomic_file(out_file) as tmp:
        writer = GGUFWriter(str(tmp), "llama")
        writer.add_name(str(getattr(config, "_name_or_path", "") or model_dir.name))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(FILE_TYPES[type_name])
        writer.add_quantization_version(GGML_QUANT_VERSION)
        _write_fields(writer, fields)
        state = model.state_dict()
        for name, tensor in state.items():
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            module = name.rsplit(".", 1)[0]
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ValueError(f"export-gguf: no GGUF name for tensor {name}")
            array = tensor.detach().float().cpu().numpy()
            if module.endswith("q_proj"):
                array = _permute_rows(array, heads)
            elif module.endswith("k_proj"):
                array = _permute_rows(array, kv_heads)
            if array.ndim == 1:
                kind = "f32"
                writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
            elif module in quantized and quant_type:
                kind = quant_type
                writer.add_tensor(target, quantize_array(array, kind),
                                  raw_dtype=GGMLQuantizationType[kind.upper()])
            else:
                kind = float_type if type_name in GGUF_TYPES else type_name
                writer.add_tensor(target, np.ascontiguousarray(
                    array, dtype=np.float16 if kind == "f16" else np.float32))
            counts[kind] = counts.get(kind, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    for note in notes:
        print(f"[export-gguf] note: {note}", flush=True)
    return {"file": str(out_file), "type": type_name, "tensors": counts, "notes": notes}
