"""Quantized cells stored as codes (relapse.models.codes): bit packing, the weights a codes folder
decodes to against the dequantized fp32 weights the quantizers compute (what a folder held before
codes), the grids the diagnostics read from the codes, and old folders refused."""

import json

import numpy as np
import pytest
import torch

from relapse.models.codes import CODES_FILE, CODES_JSON
from relapse.models.io import load_model, save_model
from relapse.models.packing import pack_bits, packed_size, unpack_bits, unpack_float
from relapse.quantize.grid import Grid, distinct_levels, read_grids
from relapse.quantize.registry import QuantJob, get_quantizer
from relapse.quantize.stage import quantize_model

CASES = [
    ("rtn", 8, {"group_size": 16}),
    ("rtn", 4, {}),                                        # group 64 > 32 columns: per row
    ("rtn", 4, {"group_size": 16, "symmetric": True}),
    ("rtn", 3, {"group_size": -1, "symmetric": True}),
    ("rtn", 3, {"group_size": 32, "lm_head": True, "embeddings": True}),
    ("rtn", 5, {"group_size": 8}),
    ("bnb", 4, {"quant_type": "fp4"}),                    # blocks straddle rows (32 columns)
    ("bnb", 4, {"quant_type": "nf4", "blocksize": 32, "double_quant": True}),
    ("bnb", 8, {}),
    ("gguf", 8, {"type": "q8_0"}),
    ("gguf", 5, {"type": "q5_0"}),
    ("gguf", 5, {"type": "q5_1"}),
    ("gguf", 4, {"type": "q4_0"}),
    ("gguf", 4, {"type": "q4_1"}),
]


def _ids(case):
    scheme, bits, settings = case
    return f"{scheme}{bits}-" + "-".join(f"{k}={v}" for k, v in settings.items())


# --- packing ------------------------------------------------------------------------------------


def _pack_by_hand(codes: list[int], bits: int) -> bytes:
    """The documented layouts, written with Python integers."""
    if bits == 8:
        return bytes(codes)
    if bits == 4:
        codes = codes + [0] * (len(codes) % 2)
        return bytes((codes[i] << 4) | codes[i + 1] for i in range(0, len(codes), 2))
    codes = codes + [0] * (-len(codes) % 8)
    out = b""
    for start in range(0, len(codes), 8):
        word = sum(c << (bits * i) for i, c in enumerate(codes[start:start + 8]))
        out += word.to_bytes(bits, "little")
    return out


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (13, 3), (2, 33), (1001,)])
def test_packing_round_trips_on_odd_shapes(bits, shape):
    rng = np.random.default_rng(bits * 100 + len(shape))
    codes = torch.from_numpy(rng.integers(0, 2 ** bits, size=shape)).to(torch.int64)
    codes.view(-1)[0] = 2 ** bits - 1                     # the largest code is always there
    packed = pack_bits(codes, bits)
    n = codes.numel()
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(n, bits)
    assert packed.numel() == {8: n, 4: (n + 1) // 2}.get(bits, -(-n // 8) * bits)
    assert bytes(packed.tolist()) == _pack_by_hand(codes.reshape(-1).tolist(), bits)
    assert torch.equal(unpack_bits(packed, bits, n).long(), codes.reshape(-1))
    assert torch.equal(unpack_float(packed, bits, n), codes.reshape(-1).float())


def test_packing_refuses_codes_out_of_range_and_wrong_sizes():
    with pytest.raises(ValueError, match="outside"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="outside"):
        pack_bits(torch.tensor([-1]), 4)
    with pytest.raises(ValueError, match="do not hold"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 9)
    with pytest.raises(ValueError, match="1 to 8"):
        pack_bits(torch.tensor([0]), 9)


# --- bit-identical weights ----------------------------------------------------------------------


def _today(folder, scheme, bits, settings, out):
    """What the quantize stage wrote before codes: the quantizer's dequantized fp32 weights saved
    as model.safetensors, and the grid it recorded."""
    model = load_model(folder)
    job = QuantJob(source_dir=folder, out_dir=out)
    out.mkdir()
    get_quantizer(scheme).quantize(model, bits, settings, job)
    save_model(model, out, tokenizer_dir=folder)
    return job


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_codes_decode_to_exactly_todays_weights(tmp_path, tiny_lm, case):
    scheme, bits, settings = case
    folder, _, _ = tiny_lm
    job = _today(folder, scheme, bits, settings, tmp_path / "fp32")
    manifest = quantize_model(folder, tmp_path / "codes", scheme, bits, settings)
    files = {p.name for p in (tmp_path / "codes").iterdir()}
    assert {CODES_FILE, CODES_JSON} <= files and "model.safetensors" not in files
    assert "quant_steps.safetensors" not in files
    assert "stored_dense" not in manifest["settings"]       # every quantized weight as codes
    layout = json.loads((tmp_path / "codes" / CODES_JSON).read_text())
    assert set(layout["tensors"]) == {f"{m}.weight" for m in job.steps}
    for dtype in ("float32", "bfloat16"):
        old = load_model(tmp_path / "fp32", dtype=dtype)
        new = load_model(tmp_path / "codes", dtype=dtype)
        old_state, new_state = old.state_dict(), new.state_dict()
        assert list(old_state) == list(new_state)
        for name in old_state:
            assert _same_bits(old_state[name], new_state[name]), (dtype, name)
        assert new.lm_head.weight.data_ptr() == new.model.embed_tokens.weight.data_ptr() \
            or not old.config.tie_word_embeddings
        assert new.config.name_or_path == str(tmp_path / "codes")
        assert {**new.config.to_dict(), "_name_or_path": ""} == \
            {**old.config.to_dict(), "_name_or_path": ""}
        assert new.generation_config.to_dict() == old.generation_config.to_dict()
    # the grid the diagnostics read from the codes is the one the quantizer recorded
    grids = read_grids(tmp_path / "codes")
    assert set(grids) == set(job.steps)
    levels = None if job.codebook is None else distinct_levels(job.codebook)
    for module, (step, group_index) in job.steps.items():
        expected = Grid(step[:, group_index.long()], levels)
        assert _same_bits(grids[module].scale, expected.scale), module
        assert (grids[module].levels is None) == (levels is None)
        if levels is not None:
            assert torch.equal(grids[module].levels, levels)


def test_a_4bit_cell_is_about_half_a_byte_per_quantized_weight(tmp_path, tiny_lm):
    """rtn-w4 per group of 16: 4 bits of code, a 4-byte scale and a 4-bit zero point per 16
    weights; everything else dense in fp32."""
    folder, model, _ = tiny_lm
    quantize_model(folder, tmp_path / "q", "rtn", 4, {"group_size": 16})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "q" / CODES_FILE), framework="pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    name = "model.layers.0.mlp.down_proj.weight"
    rows, cols = model.get_submodule(name.removesuffix(".weight")).weight.shape
    assert sizes[f"{name}.codes"] == [rows * cols // 2]
    assert sizes[f"{name}.scale"] == [rows, cols // 16]
    assert sizes[f"{name}.zero"] == [rows * cols // 16 // 2]
    assert name not in sizes


def test_a_weight_that_would_not_decode_exactly_is_stored_dense(tmp_path, tiny_lm, monkeypatch):
    import relapse.models.codes as codes

    folder, _, _ = tiny_lm
    real = codes.decode

    def off_by_one_ulp(kind, meta, t):
        value = real(kind, meta, t)
        return torch.nextafter(value, torch.full_like(value, float("inf")))

    monkeypatch.setattr(codes, "decode", off_by_one_ulp)
    manifest = quantize_model(folder, tmp_path / "q", "rtn", 4, {"group_size": 16})
    monkeypatch.setattr(codes, "decode", real)
    assert len(manifest["settings"]["stored_dense"]) == manifest["settings"]["modules"]
    job = _today(folder, "rtn", 4, {"group_size": 16}, tmp_path / "fp32")
    old, new = load_model(tmp_path / "fp32").state_dict(), load_model(tmp_path / "q").state_dict()
    assert all(_same_bits(old[n], new[n]) for n in old)
    grids = read_grids(tmp_path / "q")          # the grid is then stored beside the weight
    for module, (step, group_index) in job.steps.items():
        assert _same_bits(grids[module].scale, step[:, group_index.long()])


# --- folders from before codes ------------------------------------------------------------------


def test_a_folder_from_before_codes_asks_to_be_requantized(tmp_path, tiny_lm):
    folder, _, _ = tiny_lm
    old = tmp_path / "rtn-w4" / "model"
    old.parent.mkdir()
    _today(folder, "rtn", 4, {}, old)
    from safetensors.torch import save_file

    save_file({"step/model.layers.0.mlp.up_proj": torch.ones(64, 1)},
              str(old / "quant_steps.safetensors"))
    (old / "quant_manifest.json").write_text(json.dumps({"scheme": "rtn", "bits": 4}))
    for read in (load_model, read_grids):
        with pytest.raises(ValueError, match=rf"{old}.*re-quantize"):
            read(old)
    layout = tmp_path / "new"
    quantize_model(folder, layout, "rtn", 4, {})
    spec = json.loads((layout / CODES_JSON).read_text())
    (layout / CODES_JSON).write_text(json.dumps({**spec, "version": 0}))
    with pytest.raises(ValueError, match="re-quantize"):
        load_model(layout)


def test_codes_folders_keep_their_integrity_hashes(tmp_path, tiny_lm):
    from relapse.models.io import WEIGHT_HASHES, CorruptModelError

    folder, _, _ = tiny_lm
    quantize_model(folder, tmp_path / "q", "rtn", 4, {})
    assert set(json.loads((tmp_path / "q" / WEIGHT_HASHES).read_text())) == {CODES_FILE}
    data = bytearray((tmp_path / "q" / CODES_FILE).read_bytes())
    data[-1] ^= 1                                  # a flipped bit in the last code byte
    (tmp_path / "q" / CODES_FILE).write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match="changed after it was written"):
        load_model(tmp_path / "q")


# --- survival diagnostics -----------------------------------------------------------------------


def test_survival_diagnostics_from_codes_equal_those_from_fp32_weights(tmp_path, tiny_lm,
                                                                        monkeypatch):
    """The diagnostics read the quantized weights and grids from the codes; the same table
    comes out of the dequantized fp32 weights and the grids the quantizer recorded."""
    import copy

    import pandas as pd

    import relapse.quantize.diagnostics as diagnostics
    import relapse.quantize.grid as grid_module
    from relapse.data.prepare import build_splits

    folder, model, _ = tiny_lm
    data = tmp_path / "data"
    data.mkdir()
    build_splits({"people": 20, "seed": 0})[0]["forget"].to_parquet(data / "forget.parquet")
    unlearned = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in unlearned.model.layers[0].parameters():
            p += 0.02 * torch.randn_like(p)
    save_model(unlearned, tmp_path / "u", tokenizer_dir=folder)
    cells, fp32, steps = [], {}, {}
    for scheme, bits, settings in [("rtn", 4, {"group_size": 16}), ("bnb", 4, {}),
                                   ("bnb", 8, {}), ("gguf", 4, {})]:
        q = f"{scheme}-w{bits}"
        for who, src in (("t", folder), ("u", tmp_path / "u")):
            codes_dir = tmp_path / f"{who}-{q}"
            quantize_model(src, codes_dir, scheme, bits, settings)
            job = _today(src, scheme, bits, settings, tmp_path / f"{who}-{q}-fp32")
            fp32[codes_dir] = tmp_path / f"{who}-{q}-fp32"
            steps[codes_dir] = job
        cells.append((q, tmp_path / f"t-{q}", tmp_path / f"u-{q}"))
    keys = {"bench": "b", "method": "m", "hp": "h", "seed": 0}
    cfg = {"samples": 3, "max_tokens": 24}

    def run(out):
        return diagnostics.survival_diagnostics(folder, tmp_path / "u", cells, data, keys, cfg,
                                                tmp_path / out, dtype="float32")

    from_codes = run("codes.parquet")

    def fp32_weights(model_dir, names, dtype="float32"):
        loaded = load_model(fp32[model_dir], dtype=dtype)
        return {n: loaded.get_submodule(n).weight.detach().float() for n in names}

    def recorded_grids(model_dir):
        job = steps[model_dir]
        levels = None if job.codebook is None else distinct_levels(job.codebook)
        return {m: Grid(s[:, gi.long()], levels) for m, (s, gi) in job.steps.items()}

    monkeypatch.setattr(diagnostics, "_linear_weights", fp32_weights)
    monkeypatch.setattr(grid_module, "read_grids", recorded_grids)
    from_fp32 = run("fp32.parquet")
    assert len(from_codes) == 4 * 14
    pd.testing.assert_frame_equal(from_codes, from_fp32, check_exact=True)


def test_dense_tensors_exact_in_bf16_are_stored_in_bf16(tmp_path, tiny_lm):
    """An embedding untouched since a bf16 release takes 2 bytes a value and loads back equal;
    one with float32-only values stays float32."""
    import copy

    from safetensors import safe_open

    folder, model, tok = tiny_lm
    released = copy.deepcopy(model)
    with torch.no_grad():
        emb = released.model.embed_tokens.weight
        emb.copy_(emb.to(torch.bfloat16).float())
        assert not torch.equal(emb.to(torch.float16).float(), emb)   # not fp16-exact
    save_model(released, tmp_path / "src", tokenizer_dir=folder)
    for source, expected in ((tmp_path / "src", "BF16"), (folder, "F32")):
        out = tmp_path / f"q-{expected}"
        quantize_model(source, out, "rtn", 4, {"group_size": 16})
        with safe_open(str(out / CODES_FILE), framework="pt") as f:
            assert f.get_slice("model.embed_tokens.weight").get_dtype() == expected
        a, b = load_model(source).state_dict(), load_model(out).state_dict()
        assert _same_bits(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
        assert b["model.embed_tokens.weight"].dtype == torch.float32


@pytest.mark.parametrize("scheme, bits", [("none", 16), ("rtn", 4)])
def test_lora_adapter_mode_copies_the_base_cell_as_it_is_stored(tmp_path, tiny_lm, scheme, bits):
    """Under lora_merge: adapter the cell is the target's cell plus the adapter: the base's codes
    (a quantized base) or its weight files (none-w16, which holds no codes)."""
    from peft import LoraConfig, get_peft_model

    folder, model, tok = tiny_lm
    run = tmp_path / "run"
    peft_model = get_peft_model(
        load_model(folder), LoraConfig(r=2, target_modules=["up_proj"], lora_dropout=0.0))
    peft_model.save_pretrained(str(run / "adapter"))
    save_model(peft_model.merge_and_unload(), run, tokenizer_dir=folder)
    quantize_model(folder, tmp_path / "base", scheme, bits, {})
    quantize_model(run, tmp_path / "cell", scheme, bits, {}, lora_merge="adapter",
                   base_quant_dir=tmp_path / "base")
    base = load_model(tmp_path / "base").state_dict()
    cell = load_model(tmp_path / "cell").state_dict()
    assert all(_same_bits(base[n], cell[n]) for n in base)


# --- GPTQModel's packed checkpoints (gptq, awq) read in place ------------------------------------


def _words_by_hand(codes: list[int], bits: int) -> list[int]:
    """int32 words (as signed ints) of one little-endian bit stream: code i at bit bits·i."""
    stream = sum(int(c) << (bits * i) for i, c in enumerate(codes))
    n = -(-len(codes) * bits // 32)
    words = [(stream >> (32 * w)) & 0xFFFFFFFF for w in range(n)]
    return [w - 2 ** 32 if w >= 2 ** 31 else w for w in words]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpack_words_reads_one_little_endian_stream_per_row(bits):
    from relapse.models.packing import unpack_words

    rng = np.random.default_rng(bits)
    rows = [list(rng.integers(0, 2 ** bits, 64)) for _ in range(3)]      # 64 codes: whole words
    rows[0][:8] = [2 ** bits - 1] * 8                   # high bits set: signed int32 words
    words = torch.tensor([_words_by_hand(r, bits) for r in rows], dtype=torch.int32)
    assert torch.equal(unpack_words(words, bits, 64), torch.tensor(rows, dtype=torch.int16))
    assert torch.equal(unpack_words(words, bits, 5), torch.tensor(rows)[:, :5].to(torch.int16))


def test_gptq_v1_zero_points_come_back_through_the_borrow_of_a_zero():
    """GPTQ v1 stores every zero point minus one by subtracting 0x11111111 from the whole word;
    a zero point of 0 borrows from its neighbour. Adding the word back (GPTQModel's reading)
    restores both; adding one to each decoded field would not."""
    from relapse.models.codes import _gptq_zeros

    zeros = [0, 5, 15, 1, 0, 0, 8, 3]
    v2 = sum(z << (4 * i) for i, z in enumerate(zeros))
    v1 = (v2 - 0x11111111) % 2 ** 32
    word = torch.tensor([[v1 - 2 ** 32 if v1 >= 2 ** 31 else v1]], dtype=torch.int32)
    got = _gptq_zeros({"bits": 4, "zero_format": "v1"}, word, 8)
    assert got.tolist() == [zeros]
    fieldwise = [((v1 >> (4 * i)) + 1) & 15 for i in range(8)]
    assert fieldwise != zeros


def test_gptq_and_awq_codes_decode_to_the_hand_computed_fp16_products():
    from relapse.models.codes import AWQ_ORDER, decode

    rng = np.random.default_rng(0)
    out, inp, group = 16, 32, 16
    codes = rng.integers(0, 16, (out, inp))
    zeros = rng.integers(0, 16, (inp // group, out))
    scales = rng.uniform(0.001, 0.05, (inp // group, out)).astype(np.float16)
    want = np.empty((out, inp), dtype=np.float32)
    for o in range(out):
        for i in range(inp):
            g = i // group
            want[o, i] = np.float16(np.float32(scales[g, o]) * (codes[o, i] - zeros[g, o]))
    # GPTQ: input axis packed in qweight [in/8, out]; zero points v2 (as stored), g_idx uniform
    qweight = torch.tensor([[_words_by_hand([int(codes[o, i]) for i in range(c, c + 8)], 4)[0]
                             for o in range(out)] for c in range(0, inp, 8)], dtype=torch.int32)
    qzeros = torch.tensor([_words_by_hand([int(z) for z in row], 4) for row in zeros],
                          dtype=torch.int32)
    gptq = {"qweight": qweight, "qzeros": qzeros, "scales": torch.from_numpy(scales),
            "g_idx": torch.arange(inp, dtype=torch.int32) // group}
    meta = {"shape": [out, inp], "bits": 4, "zero_format": "v2", "scale_dtype": "float16"}
    assert torch.equal(decode("gptq", meta, gptq), torch.from_numpy(want))
    # AWQ: output axis packed, nibble k of a word holding column AWQ_ORDER[k] of its 8
    def awq_words(row):
        return [_words_by_hand([int(row[c + AWQ_ORDER[k]]) for k in range(8)], 4)[0]
                for c in range(0, len(row), 8)]
    awq = {"qweight": torch.tensor([awq_words(codes[:, i]) for i in range(inp)],
                                   dtype=torch.int32),
           "qzeros": torch.tensor([awq_words(row) for row in zeros], dtype=torch.int32),
           "scales": torch.from_numpy(scales)}
    meta = {"shape": [out, inp], "bits": 4, "group": group, "scale_dtype": "float16"}
    assert torch.equal(decode("awq", meta, awq), torch.from_numpy(want))


def test_a_codes_folder_whose_native_checkpoint_is_gone_says_so(tmp_path):
    from safetensors.torch import save_file

    from relapse.models.codes import FORMAT, VERSION, decode_tensors

    save_file({"x": torch.zeros(1)}, str(tmp_path / CODES_FILE))
    (tmp_path / CODES_JSON).write_text(json.dumps({
        "format": FORMAT, "version": VERSION, "file": CODES_FILE, "dense": [], "narrowed": {},
        "grids": {}, "tensors": {"w.weight": {"kind": "awq", "shape": [8, 8], "bits": 4,
                                              "group": 8, "scale_dtype": "float16",
                                              "file": "native/model.safetensors",
                                              "keys": {"qweight": "w.qweight"}}}}))
    with pytest.raises(FileNotFoundError, match="native/model.safetensors: missing"):
        decode_tensors(tmp_path)


def test_a_gptq_folder_from_before_its_codes_asks_to_be_requantized(tmp_path, tiny_lm):
    """Before, gptq/awq folders held dense weights that GPTQModel's CPU loader had dequantized
    with bf16-rounded scales; such a folder (no `dense_in`, a native/ beside) is refused."""
    folder, _, _ = tiny_lm
    quantize_model(folder, tmp_path / "q", "rtn", 4, {})
    assert load_model(tmp_path / "q") is not None              # today's layout: fine
    layout = json.loads((tmp_path / "q" / CODES_JSON).read_text())
    del layout["dense_in"]
    (tmp_path / "q" / CODES_JSON).write_text(json.dumps(layout))
    assert load_model(tmp_path / "q") is not None              # an rtn folder of that age: fine
    (tmp_path / "q" / "native").mkdir()
    with pytest.raises(ValueError, match="re-quantize it"):
        load_model(tmp_path / "q")
    with pytest.raises(ValueError, match="before their codes"):
        read_grids(tmp_path / "q")


def test_lora_adapter_mode_takes_along_the_checkpoint_a_base_cell_reads_in_place(tmp_path,
                                                                                  tiny_lm):
    """A gptq/awq base cell's codes live in native/; the adapter-mode cell copies that folder
    with them. Here an rtn cell is rewritten into that shape (GPTQModel takes minutes)."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from relapse.models.io import seal_weights

    folder, _, _ = tiny_lm
    base = tmp_path / "base"
    quantize_model(folder, base, "rtn", 4, {})
    want = load_model(base).state_dict()
    (base / "native").mkdir()
    shutil.move(base / CODES_FILE, base / "native" / "model.safetensors")
    save_file({}, str(base / CODES_FILE))
    layout = json.loads((base / CODES_JSON).read_text())
    for name, entry in layout["tensors"].items():
        entry["file"] = "native/model.safetensors"
        entry["keys"] = {k[len(name) + 1:]: k for k in entry["keys"]}
    layout["dense_in"] = {name: "native/model.safetensors" for name in layout["dense"]}
    (base / CODES_JSON).write_text(json.dumps(layout))
    seal_weights(base, extra=["native/model.safetensors"])
    assert all(_same_bits(want[n], v) for n, v in load_model(base).state_dict().items())

    run = tmp_path / "run"
    peft_model = get_peft_model(
        load_model(folder), LoraConfig(r=2, target_modules=["up_proj"], lora_dropout=0.0))
    peft_model.save_pretrained(str(run / "adapter"))
    save_model(peft_model.merge_and_unload(), run, tokenizer_dir=folder)
    quantize_model(run, tmp_path / "cell", "rtn", 4, {}, lora_merge="adapter",
                   base_quant_dir=base)
    assert (tmp_path / "cell" / "native" / "model.safetensors").exists()
    cell = load_model(tmp_path / "cell").state_dict()
    assert all(_same_bits(want[n], cell[n]) for n in want)


@pytest.mark.parametrize("type_name", ["q8_0", "q4_0", "q4_1"])
def test_gguf_blocks_decoded_in_torch_equal_the_gguf_packages_dequantizer(type_name):
    """Random block bytes (any fp16 scale: subnormal, negative, inf, NaN) decode to the gguf
    package's own values bit for bit; NaN where it has NaN (which NaN payload an operation
    returns for two NaN operands may differ between SIMD code paths, so payloads are not
    compared)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from relapse.models.codes import _GGUF_IN_TORCH, decode

    assert type_name in _GGUF_IN_TORCH            # the torch path, not the package's own
    rng = np.random.default_rng(7)
    size = {"q8_0": 34, "q4_0": 18, "q4_1": 20}[type_name]
    raw = rng.integers(0, 256, (6, 4 * size), dtype=np.uint8)      # 6 rows of 128 weights
    want = dequantize(raw, GGMLQuantizationType[type_name.upper()]).reshape(6, 128)
    got = decode("gguf", {"shape": [6, 128], "type": type_name}, {"codes": torch.from_numpy(raw)})
    assert got.dtype == torch.float32
    got, want = got.numpy(), want.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
