"""The checks of relapse.config.validate that need the whole config, the registries or the disk:
what the workflow would otherwise find only while planning or in a job. `relapse validate` and
the Snakefile both call validate, so they always agree.

`check_paths` runs before the benchmarks' own checks (a mistyped local path is reported as a
path, not as a hub id); `check_plan` after them.
"""

from __future__ import annotations

from pathlib import Path

from relapse.config import ConfigError

# Reference keys by the kinds that read them (a key listed for no kind is read by every kind,
# e.g. seed). The training recipe serves both training from scratch and fine-tuning a GGUF base.
_RECIPE = ("max_epochs", "lr", "schedule", "grad_clip", "batch_size", "max_block_pairs",
           "stop_at", "check_every")
REFERENCE_KEYS = {
    "train": ("arch", "tokenizer") + _RECIPE,
    "gguf": ("path", "package", "file", "params", "lora") + _RECIPE,
    "pretrained": ("target", "retrain", "revision", "trust_remote_code", "dtype"),
}


def _resolved(cfg: dict, bench: str) -> dict:
    from relapse.grid import resolved_bench

    return resolved_bench(cfg, bench)


def check_paths(cfg: dict) -> None:
    """A `corpus.source` or `reference.target` / `retrain` that is a path (relapse.data.corpora.
    hub.looks_local) must be an existing folder (a snapshot, or a model folder)."""
    from relapse.data.corpora.hub import looks_local

    for name, entry in cfg["benchmarks"].items():
        places = [("corpus", "source")] + [("reference", k) for k in ("target", "retrain")]
        for section, key in places:
            value = entry.get(section, {}).get(key)
            if not isinstance(value, str) or not looks_local(value):
                continue
            path = Path(value).expanduser()
            if not path.is_dir():
                why = (f"it starts with {value[0]!r}" if value.startswith(("/", "~", "."))
                       else "it has more than one '/'")
                what = "is a file, not a folder" if path.exists() else "does not exist"
                raise ConfigError(
                    f"benchmarks.{name}.{section}.{key}: {value!r} is a local path ({why}) that "
                    f"{what} (from {Path.cwd()}); allowed: an existing folder, or a hub id "
                    "(name or owner/name)")


def check_plan(cfg: dict) -> None:
    _check_kind_keys(cfg)
    _check_lora_setting(cfg)
    _check_hp_values(cfg)
    _check_one_shot(cfg)
    _check_privleak_reference(cfg)
    _check_attacks(cfg)
    _check_lm_eval(cfg)


def _check_kind_keys(cfg: dict) -> None:
    """A corpus or reference key that another kind reads, on a kind that does not read it, would
    be silently ignored."""
    from relapse.data.corpora import corpus_kinds, get_corpus

    corpus_keys = {k: tuple(getattr(get_corpus(k), "keys", ())) for k in corpus_kinds()}
    for bench in cfg["benchmarks"]:
        entry = _resolved(cfg, bench)
        for section, readers, default in (("corpus", corpus_keys, "synthetic"),
                                          ("reference", REFERENCE_KEYS, "train")):
            kind = entry.get(section, {}).get("kind", default)
            for key in entry.get(section, {}):
                others = [k for k, keys in readers.items() if key in keys]
                if key == "kind" or not others or key in readers.get(kind, ()):
                    continue
                raise ConfigError(
                    f"benchmarks.{bench}.{section}.{key}: not read by {section} kind {kind} "
                    f"(it would be ignored); read by kind {', '.join(others)}; allowed for "
                    f"{kind}: {', '.join(readers.get(kind, ())) or 'none'}")


def _check_lora_setting(cfg: dict) -> None:
    """LLMEraser's LoRA setting trains a base from scratch (the bench's retrain model)."""
    for bench, entry in cfg["benchmarks"].items():
        if "lora_setting" not in entry:
            continue
        kind = _resolved(cfg, bench)["reference"].get("kind", "train")
        if "base" in entry or kind != "train":
            what = f"base: {entry['base']}" if "base" in entry else f"reference.kind: {kind}"
            raise ConfigError(
                f"benchmarks.{bench}.lora_setting: not allowed with {what}; allowed only with "
                "reference.kind: train and no base: (its base is the bench's own retrain model)")


def _check_hp_values(cfg: dict) -> None:
    """Every grid value against what its method accepts (relapse.unlearn.hparams)."""
    from relapse.unlearn.hparams import problems
    from relapse.unlearn.registry import get_method

    for name, grids in cfg["methods"].items():
        method = get_method(name)
        defaults, rules = method.defaults(), method.hparam_rules()
        default_params = cfg["unlearning"].get("params", ["lora"])
        for i, grid in enumerate(grids if isinstance(grids, list) else [grids]):
            where = f"methods.{name}" + (f"[{i}]" if isinstance(grids, list) else "")
            for key, value, allowed in problems(defaults, rules, grid):
                raise ConfigError(f"{where}.{key}: {value!r} is not allowed for {name}; "
                                  f"allowed: {allowed}")
            if "params" not in grid:
                for key, value, allowed in problems(defaults, rules, {"params": default_params}):
                    raise ConfigError(f"unlearning.params: {value!r} is not allowed for {name} "
                                      f"(its grid {where} sets no params); allowed: {allowed}")


def _check_one_shot(cfg: dict) -> None:
    """A one-shot method (llmeraser) updates the adapter of a LoRA-setting target: every bench
    needs lora_setting, and its adapter sits on the LoRA-setting base, not on a quantized
    target (lora_merge: adapter)."""
    from relapse.unlearn.oneshot import one_shot_methods

    for method in [m for m in cfg["methods"] if m in one_shot_methods()]:
        missing = [b for b, e in cfg["benchmarks"].items() if "lora_setting" not in e]
        if missing:
            raise ConfigError(
                f"methods.{method}: benchmark(s) {', '.join(missing)} have no lora_setting; "
                f"{method} updates a LoRA-setting target; allowed: set benchmarks.NAME."
                f"lora_setting on every benchmark, or drop {method} from this config")
        if cfg["quantization"]["lora_merge"] == "adapter":
            raise ConfigError(
                f"quantization.lora_merge: 'adapter' with method {method}, whose adapter sits on "
                "the LoRA-setting base, not on the quantized target; allowed: merged")


def _check_privleak_reference(cfg: dict) -> None:
    from relapse.evaluate.metrics.privleak import full_precision_quant, reference_names
    from relapse.grid import quant_settings

    if not {"privleak", "tofu"} & set(cfg["evaluation"]["metrics"]):
        return
    try:
        names = reference_names(cfg["evaluation"]["privleak"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if "full" in names and full_precision_quant(quant_settings(cfg)) is None:
        raise ConfigError(
            "evaluation.privleak.reference: 'full' compares with the full-precision retrain "
            "model, but quantization.schemes has no {scheme: none} entry; allowed: add "
            "{scheme: none, bits: [16]}, or set evaluation.privleak.reference: matched")


def _check_attacks(cfg: dict) -> None:
    from relapse.attacks import plan

    try:
        plan.check(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_lm_eval(cfg: dict) -> None:
    """Metric lm_eval: every task known to lm-eval, every local snapshot holding what its task
    reads (relapse.evaluate.lmeval_tasks), before any job; a selection on MMLU or WMDP needs
    that task evaluated."""
    selection = cfg["report"]["selection"]
    tasks = cfg["evaluation"]["lm_eval"]["tasks"] \
        if "lm_eval" in cfg["evaluation"]["metrics"] else []
    for key, default in (("utility", "knowmem_retain"), ("forget", "knowmem_forget")):
        value = selection.get(key, default)
        if value != default and value not in tasks:
            raise ConfigError(
                f"report.selection.{key}: {value!r} selects on lm-eval task {value}, which this "
                f"config does not evaluate (evaluation.lm_eval.tasks: "
                f"{', '.join(tasks) if tasks else 'metric lm_eval not in evaluation.metrics'}); "
                f"allowed: {default}, or add metric lm_eval with task {value}")
    if "lm_eval" not in cfg["evaluation"]["metrics"]:
        return
    from relapse.evaluate.lmeval_tasks import TaskError, check

    try:
        check(cfg["evaluation"]["lm_eval"])
    except TaskError as err:
        raise ConfigError(str(err)) from None
    except ImportError as err:       # lm-eval is a dependency; a broken venv says so here
        raise ConfigError(f"evaluation.metrics: 'lm_eval' needs lm-eval installed ({err})") \
            from None
