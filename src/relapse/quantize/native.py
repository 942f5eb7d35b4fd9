"""`evaluation.kernels: native`: a quantized cell evaluated the way a user would serve it, with
the packed model and its library's own kernels, instead of the dequantized weights in plain
Linear modules (`dequantized`, the default; DESIGN §7).

- bnb 4-bit: bitsandbytes `Linear4bit` (fp4/nf4, the cell's blocksize and double quant), what
  `load_in_4bit` builds; the saved weights sit on the grid, so quantizing them again inside
  Params4bit gives back the same codes (tested), and the matmul runs bitsandbytes' 4-bit kernel.
- bnb 8-bit: `Linear8bitLt` (LLM.int8 with outlier decomposition), whatever `int8_activations`
  says, as `load_in_8bit` does.
- gptq, awq: the packed `native/` checkpoint loaded by GPTQModel with its kernel for the device
  (relapse.quantize.gptqmodel_backend).
- gguf: the cell written as a GGUF file at its type (exact: its weights are on that grid) into a
  temporary folder, and run by llama.cpp itself (relapse.models.llamacpp), the runtime GGUF
  files are served with. It needs the optional llama-cpp-python (`.[llamacpp]`).
- none: full precision, the same model either way.
- rtn is the paper's fake quantization and has no packed runtime, so a config asking for native
  kernels with it fails at validation (`native_kernel_problem`).
"""

from __future__ import annotations

from pathlib import Path

KERNELS = ("dequantized", "native")
# scheme -> devices whose native kernels relapse can load (checked on CPU here: bitsandbytes'
# fp4/nf4/int8 CPU kernels, GPTQModel's GPTQ_TORCH and AWQ_TORCH torch kernels).
# llama.cpp: CPU kernels always; CUDA where llama-cpp-python was built with GGML_CUDA (checked
# when the model loads, since importing the library at validation would load it).
NATIVE_DEVICES = {"none": ("cpu", "cuda"), "bnb": ("cpu", "cuda"), "gptq": ("cpu", "cuda"),
                  "awq": ("cpu", "cuda"), "gguf": ("cpu", "cuda")}
_NO_NATIVE = {
    "rtn": "rtn is fake quantization in torch and has no packed kernel",
}
# schemes whose packed model cannot carry `lora_merge: adapter`'s LoRA adapter, and why
_NO_ADAPTER = {
    "gptq": "relapse does not load a peft adapter over GPTQModel's packed modules",
    "awq": "relapse does not load a peft adapter over GPTQModel's packed modules",
    "gguf": "one GGUF file cannot hold it",
}


def native_kernel_problem(scheme: str, device: str, lora_merge: str = "merged") -> str | None:
    """Why `scheme` cannot be evaluated with native kernels on `device` (None: it can)."""
    if scheme in _NO_NATIVE:
        return _NO_NATIVE[scheme]
    devices = NATIVE_DEVICES.get(scheme, ())
    if device not in devices:
        return f"its native kernels run on {', '.join(devices) or 'no device'}, not {device}"
    if scheme in _NO_ADAPTER and lora_merge == "adapter":
        return ("lora_merge: adapter keeps a LoRA adapter over the quantized base, and "
                f"{_NO_ADAPTER[scheme]}")
    if scheme == "gguf":
        from importlib.util import find_spec

        if find_spec("llama_cpp") is None:
            from relapse.models.llamacpp import INSTALL_HINT

            return ("llama.cpp's runtime needs llama-cpp-python, which is not installed: "
                    f"{INSTALL_HINT}")
    return None


def swap_in_4bit_linear(model, names: list[str], quant_type: str, blocksize: int,
                        double_quant: bool, compute_dtype) -> None:
    """Replace the named Linear modules by bitsandbytes' Linear4bit built from their (on-grid)
    weights; quantization happens when the module is moved to its device, as in load_in_4bit."""
    import bitsandbytes as bnb
    import torch

    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        device = old.weight.device
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                                compute_dtype=compute_dtype, compress_statistics=double_quant,
                                quant_type=quant_type, quant_storage=torch.uint8)
        new.weight = bnb.nn.Params4bit(old.weight.data.detach().float().cpu().clone(),
                                       requires_grad=False, blocksize=blocksize,
                                       compress_statistics=double_quant, quant_type=quant_type)
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data.clone(), requires_grad=False)
        setattr(parent, child, new.to(device))


def load_native(model_dir: Path, manifest: dict, load_dequantized, device: str, dtype: str):
    """The cell's model with its scheme's native kernels. `load_dequantized()` loads the folder's
    dequantized model, which bnb swaps modules into; GPTQModel loads its packed checkpoint."""
    import torch

    scheme, bits = manifest.get("scheme"), manifest.get("bits")
    settings = manifest.get("settings", {})
    if scheme is None:          # not a quantize-stage folder: nothing packed to run
        return load_dequantized()
    problem = native_kernel_problem(scheme, device, manifest.get("lora_merge", "merged"))
    if problem:
        raise RuntimeError(f"{model_dir}: evaluation.kernels is native, but {scheme}-w{bits} "
                           f"cannot run natively here: {problem}")
    if scheme == "bnb":
        model = load_dequantized()
        from relapse.quantize.bnb import swap_in_int8_linear
        from relapse.quantize.modules import quantized_module_names

        # Linear modules only: bitsandbytes has no int8/4-bit embedding in load_in_*bit, so
        # quantized embeddings (`embeddings: true`) keep their dequantized values.
        names = [n for n in settings.get("quantized_modules")
                 or quantized_module_names(model, settings)
                 if isinstance(model.get_submodule(n), torch.nn.Linear)]
        if bits == 8:
            swap_in_int8_linear(model, names, settings.get("threshold", 6.0))
        else:
            swap_in_4bit_linear(model, names, settings.get("quant_type", "fp4"),
                                settings.get("blocksize", 64), settings.get("double_quant", False),
                                getattr(torch, dtype))
        return model
    if scheme in ("gptq", "awq"):
        from relapse.quantize.gptqmodel_backend import load_native_model

        native = model_dir / settings.get("native_dir", "native")
        if not native.is_dir():
            raise RuntimeError(f"{model_dir}: no packed checkpoint {native.name}/ to run "
                               f"{scheme} natively (the quantize stage writes it)")
        return load_native_model(scheme, native, device, getattr(torch, dtype))
    if scheme == "gguf":
        return load_llamacpp(model_dir, settings["type"], device)
    return load_dequantized()


def load_llamacpp(model_dir: Path, type_name: str, device: str):
    """The gguf cell in llama.cpp: written at its type into a temporary folder ($TMPDIR; it is
    deleted with the model): written from the decoded weights, which re-quantize to the block
    bytes the cell's codes hold."""
    import tempfile

    import torch

    from relapse.models.llamacpp import LlamaCppCausalLM, LlamaCppRunner
    from relapse.quantize.export_gguf import export_gguf

    folder = tempfile.TemporaryDirectory(prefix="relapse-gguf-")
    file = Path(folder.name) / f"model-{type_name}.gguf"
    export_gguf(model_dir, file, type_name)
    runner = LlamaCppRunner(file, threads=torch.get_num_threads(), gpu=device == "cuda")
    runner.info["gguf_type"] = type_name
    return LlamaCppCausalLM(runner, keep=folder)
