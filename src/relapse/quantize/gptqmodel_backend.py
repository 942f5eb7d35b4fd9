"""GPTQ and AWQ through GPTQModel: the one place that knows that library.

Why GPTQModel (measured here): auto-gptq 0.7.1 does not import with transformers 5 and will not
quantize without CUDA; AutoAWQ 0.2.9 quantizes on CPU but its output cannot run there. GPTQModel
7.6.0 (7.7 needs torch >= 2.14.1) does both on the CPU, given GPTQMODEL_CPU_WORKERS and its torch
kernels (BACKEND.GPTQ_TORCH, BACKEND.AWQ_TORCH). A CUDA user who wants another kernel changes
`_BACKENDS` below; nothing else in relapse imports gptqmodel.

The library's packed checkpoint is kept in `native/` of the output folder (deployable as it is),
and the folder's codes (relapse.models.codes, kinds `gptq` and `awq`) point into it, so every
scheme's output is evaluated by the same loader and no weight is stored twice. The dequantized
weights are computed here by GPTQModel's own code (its fp16 kernel module, its AWQ unpacker);
the codes folder keeps a weight as codes only where relapse's decoder gives them back bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

from relapse.models.codes import NATIVE_DIR  # the codes point into it

LIBRARY_LOG_DIR = "gptqmodel_logs"


def _import_gptqmodel(threads: int):
    # GPTQModel refuses to quantize on CPU without this; it sizes its worker pool. Its model
    # loader pool is a fixed 2 workers carved out of the CPU pool, so a pool of 1 (a job given one
    # core, as on a 2-core machine running two jobs) fails with "requests 2 workers but parent
    # 'cpu' only has 1". The workers are Python threads; torch's own thread count stays `threads`.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, threads)))
    try:
        import gptqmodel
    except ImportError as err:
        raise RuntimeError("schemes gptq and awq need GPTQModel 7.6.0 "
                           "(see README: it is installed by `make`)") from err
    return gptqmodel


def _keep_library_logs_in(folder: Path) -> None:
    """GPTQModel 7.6 writes its per-module statistics (loss, samples, seconds) to `./logs` of the
    working directory, i.e. into the workflow's own logs/ folder, under random names. They
    describe one quantized model, so they go into that model's folder."""
    from gptqmodel.looper import loop_processor

    if hasattr(loop_processor, "_PROJECT_LOG_DIR"):
        loop_processor._PROJECT_LOG_DIR = Path(folder)


def _backends():
    from gptqmodel import BACKEND

    return {"gptq": BACKEND.GPTQ_TORCH, "awq": BACKEND.AWQ_TORCH}


def quantize_config(method: str, bits: int, settings: dict):
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    common = dict(bits=bits, group_size=settings["group_size"], sym=settings["symmetric"])
    if method == "gptq":
        return QuantizeConfig(**common, desc_act=settings["desc_act"],
                              damp_percent=settings["damp_percent"])
    return QuantizeConfig(**common, quant_method=METHOD.AWQ, format=FORMAT.GEMM)


def gptqmodel_quantize(method: str, model, bits: int, settings: dict, job) -> dict:
    """Quantize job.source_dir with GPTQModel into job.out_dir/native, then copy the
    dequantized weights (and, for AWQ, the norms its scales were folded into) into `model`."""
    import json

    import torch

    from relapse.models.tokenizer import load_tokenizer
    from relapse.quantize.calibration import calibration_batch

    _check_shapes(method, model, settings["group_size"])
    _import_gptqmodel(job.threads)
    from gptqmodel import GPTQModel

    cal = settings["calibration"]
    samples = calibration_batch(job.data_dir, load_tokenizer(job.source_dir), cal)
    native = Path(job.out_dir) / NATIVE_DIR
    _keep_library_logs_in(Path(job.out_dir) / LIBRARY_LOG_DIR)
    torch.manual_seed(cal["seed"])
    # GPTQ runs in fp32, so that no bf16 rounding of the weights (as large as half an 8-bit
    # step) precedes quantization; the AWQ torch kernel only packs fp16/bf16 modules.
    dtype = torch.float32 if method == "gptq" else torch.float16
    qmodel = GPTQModel.load(str(job.source_dir), quantize_config(method, bits, settings),
                            device=job.device, dtype=dtype)
    qmodel.quantize(samples, batch_size=cal["batch_size"], backend=_backends()[method])
    qmodel.save(str(native))
    del qmodel
    used_config = json.loads((native / "quantize_config.json").read_text())
    n = load_dequantized(method, native, model, bits, settings["group_size"], job)
    return {"modules": n, "calibration_tokens": sum(len(s["input_ids"]) for s in samples),
            "native_dir": NATIVE_DIR, "compute_dtype": str(dtype).removeprefix("torch."),
            "library_config": {k: v for k, v in used_config.items() if k != "meta"}}


def _check_shapes(method: str, model, group_size: int) -> None:
    """Fail with a clear message on shapes GPTQModel would reject from a worker thread (where it
    ends the whole process with os._exit(1)). Unlike relapse.quantize.groups.group_width, a
    group larger than the row is not one whole-row group here: GPTQModel rejects it too."""
    from relapse.models.modules import decoder_linear_names

    for name in decoder_linear_names(model):
        out_features, in_features = model.get_submodule(name).weight.shape
        if group_size > 0 and in_features % group_size:
            raise ValueError(f"{method}: group_size {group_size} does not divide the input "
                             f"dimension {in_features} of {name}")
        if method == "awq" and out_features % 64:
            raise ValueError(f"awq: GPTQModel's AWQ clip search needs every Linear's output "
                             f"dimension divisible by 64; {name} has {out_features}")


def load_dequantized(method: str, native: Path, model, bits: int, group_size: int, job) -> int:
    from safetensors.torch import load_file

    from relapse.quantize.groups import uniform_group_index

    state, file_of = {}, {}
    for file in sorted(native.glob("*.safetensors")):
        part = load_file(str(file))
        state.update(part)
        file_of.update({key: f"{NATIVE_DIR}/{file.name}" for key in part})
    prefixes = sorted({k[: -len(".qweight")] for k in state if k.endswith(".qweight")})
    if not prefixes:
        raise RuntimeError(f"{native}: GPTQModel wrote no quantized modules")
    if method == "gptq":
        weights = _gptq_weights(native, job.device, state[f"{prefixes[0]}.scales"].dtype)
    else:
        weights = {p: _awq_weight(state, p, bits, group_size) for p in prefixes}
    own = model.state_dict()
    import torch

    with torch.no_grad():
        for prefix in prefixes:
            target = own[f"{prefix}.weight"]
            target.copy_(weights[prefix].to(target.dtype))
            scales = state[f"{prefix}.scales"].float()           # [groups, out]
            if method == "gptq" and f"{prefix}.g_idx" in state:
                group_index = state[f"{prefix}.g_idx"].long()
            else:
                group_index = uniform_group_index(target.shape[1], group_size)
            job.record_step(prefix, scales.T, group_index)
            job.record_codes(prefix, _native_codes(method, state, file_of, prefix, bits,
                                                   group_size, tuple(target.shape), native))
        unquantized = {key: value for key, value in state.items()
                       if key in own and not any(key.startswith(p + ".") for p in prefixes)}
        if method == "awq":
            # AWQ folds its per-channel scales into the preceding norms (and Linear rows), so
            # the norms change too: take every non-quantized tensor from its checkpoint.
            for key, value in unquantized.items():
                own[key].copy_(value.to(own[key].dtype))
        # the codes folder reads these from native/ where they hold the model's exact values
        job.dense_sources.update({key: (file_of[key], value) for key, value in unquantized.items()})
    return len(prefixes)


def _native_codes(method: str, state: dict, file_of: dict, prefix: str, bits: int,
                  group_size: int, shape: tuple, native: Path):
    """The Codes of one module, pointing at its tensors in the native checkpoint."""
    import json

    from relapse.models.codes import Codes

    suffixes = ("qweight", "qzeros", "scales") + (("g_idx",) if method == "gptq" else ())
    keys = {s: f"{prefix}.{s}" for s in suffixes}
    files = {file_of[k] for k in keys.values()}
    if len(files) != 1:
        raise RuntimeError(f"{native}: the tensors of {prefix} are split over {sorted(files)}")
    meta = {"shape": list(shape), "bits": bits,
            "scale_dtype": str(state[keys["scales"]].dtype).removeprefix("torch.")}
    if method == "gptq":
        used = json.loads((native / "quantize_config.json").read_text())
        # GPTQModel saves GPTQ in its v1 checkpoint format (zero points minus one) unless
        # told otherwise; its config names which
        v2 = used.get("checkpoint_format", used.get("format")) == "gptq_v2"
        meta["zero_format"] = "v2" if v2 else "v1"
    else:
        meta["group"] = group_size if group_size > 0 else shape[1]
    return Codes(method, meta, {s: state[k] for s, k in keys.items()},
                 file=files.pop(), keys=keys)


def _gptq_weights(native: Path, device: str, dtype) -> dict:
    """Dequantize through GPTQModel's torch kernel modules (loaded with BACKEND.GPTQ_TORCH), in
    the dtype of the checkpoint's scales: loaded without one, GPTQModel picks bf16 on a CPU and
    rounds every fp16 scale to bf16 (up to 0.4% off the scales GPTQ computed)."""
    from gptqmodel import GPTQModel

    loaded = GPTQModel.load(str(native), backend=_backends()["gptq"], device=device,
                            dtype=dtype)
    out = {}
    for name, module in loaded.model.named_modules():
        if hasattr(module, "dequantize_weight") and hasattr(module, "qweight"):
            out[name] = module.dequantize_weight().T.detach().float().cpu()
    del loaded
    return out


def _awq_weight(state: dict, prefix: str, bits: int, group_size: int):
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    weight = dequantize_gemm(state[f"{prefix}.qweight"], state[f"{prefix}.qzeros"],
                             state[f"{prefix}.scales"], bits, group_size)
    return weight.T.float()


def load_native_model(method: str, native: Path, device: str, dtype):
    """The packed checkpoint as a user would serve it (`evaluation.kernels: native`): the
    transformers model inside GPTQModel's wrapper, its Linear layers GPTQModel's quantized
    modules with the kernel of `_backends()` (torch kernels, which run on CPU and CUDA). Those
    kernels compute in fp16 or bf16 only (GPTQ_TORCH refuses float32; AWQ_TORCH casts to
    fp16), so a float32 request runs in fp16, as such checkpoints are served."""
    import torch

    _import_gptqmodel(1)
    from gptqmodel import GPTQModel

    if dtype not in (torch.float16, torch.bfloat16):
        dtype = torch.float16

    loaded = GPTQModel.load(str(native), backend=_backends()[method], device=device, dtype=dtype)
    return loaded.model.eval()
