# Config validation, paths, wildcard constraints and resources shared by every rule.

import os
import re
import shutil
import sys

import json

from snakemake.exceptions import WorkflowError

from relapse import grid
from relapse.config import ConfigError, check_device, gpu_count, load_yaml, validate
from relapse.fingerprint import local_fingerprint
from relapse.quantize.registry import get_quantizer
from relapse.attacks import plan as attack_plan
from relapse.quantize import plan as quantize_plan


# Validate before any job runs: a bad value stops here with the key, the value and what is allowed.
# relapse.config.validate makes every check (as `relapse validate` does); the rules raise nothing.
# Snakemake's YAML reader keeps the last of two equal keys (a second bench of one name would
# silently replace the first), so every config file is read again by the strict loader.
def _dry_run_argv():
    """`-n` / `--dry-run` (alone or among short flags, `-np`): while the Snakefile is parsed the
    executor is not chosen yet, so `workflow.dryrun` is still False in a dry run."""
    return any(a in ("--dry-run", "--dryrun") or re.fullmatch(r"-[A-Za-z]*n[A-Za-z]*", a)
               for a in sys.argv[1:])


try:
    for _configfile in dict.fromkeys(map(str, workflow.configfiles)):
        load_yaml(_configfile)
    _validated = validate(config)
    check_device(_validated, local=workflow.local_exec and not (workflow.dryrun or _dry_run_argv()
                                                                or workflow.remote_exec))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_validated)

# CPU numerics (config `numerics`, relapse.numerics): set while the Snakefile is parsed, before
# any job starts. Local jobs are this process's children and inherit it; the SLURM plugin
# submits with `sbatch --export=ALL` (this environment), and the job then runs Snakemake on
# this Snakefile again in its allocation, which sets it there too.
from relapse.numerics import pin

pin(config["numerics"])

# Every job re-reads the Snakefile, so this reaches local and SLURM jobs alike.
from relapse.models.io import set_weight_verification

set_weight_verification(config.get("integrity", {}).get("verify_weights", True))

# Jobs run `relapse`: from the rule's conda env, the activated venv, or else the environment
# whose Python runs Snakemake (`.venv/bin/snakemake` without activating the venv).
if shutil.which("relapse") is None:
    shell.prefix(f'export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')

BENCHES = list(config["benchmarks"])
SNAPPED = [b for b in BENCHES if "base" in config["benchmarks"][b]]
# kind: gguf: a pretrained base loaded from a GGUF file, fine-tuned into target and retrain (no
# tokenizer training); kind: train: a tokenizer and a tiny model trained here.
GGUF = [b for b in BENCHES if b not in SNAPPED
        and config["benchmarks"][b]["reference"].get("kind", "train") == "gguf"]
# kind: pretrained: published target and retrain models, fetched (hub id or local folder).
PRETRAINED = [b for b in BENCHES if b not in SNAPPED
              and config["benchmarks"][b]["reference"].get("kind", "train") == "pretrained"]
TRAINED = [b for b in BENCHES if b not in SNAPPED and b not in GGUF and b not in PRETRAINED]
# Benches whose data stage runs a pretrained base (world facts): GGUF ones and their snaps.
ON_PRETRAINED = [b for b in BENCHES if config["benchmarks"][b].get("base", b) in GGUF]
# Benches on a registered hub corpus (muse, tofu): the data stage reads the source and cuts it
# with the reference target's tokenizer.
HUB_CORPUS = [b for b in BENCHES
              if grid.resolved_bench(config, b)["corpus"].get("kind", "synthetic") != "synthetic"]
SYNTHETIC_ONLY = [b for b in BENCHES if b not in ON_PRETRAINED and b not in HUB_CORPUS]
UNLEARN_METHODS = list(config["methods"])
# LLMEraser's LoRA setting (workflow/rules/lora_setting.smk): target and retrain are a base plus
# a LoRA adapter; one-shot methods (llmeraser) run there by their own rule, not `unlearn`.
from relapse.unlearn.oneshot import one_shot_methods

LORA_SETTING = [b for b in TRAINED if "lora_setting" in config["benchmarks"][b]]
ONE_SHOT = [m for m in UNLEARN_METHODS if m in one_shot_methods()]
QUANTS = grid.quant_settings(config)
GPU = gpu_count(config)


def alternatives(names):
    """A wildcard regex matching exactly `names` (and nothing when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


wildcard_constraints:
    bench=alternatives(BENCHES),
    method=alternatives(UNLEARN_METHODS + list(grid.BASELINES)),
    hp="[^/]+",
    seed=r"\d+",
    quant=alternatives(QUANTS),


# Per-stage defaults, sized for the embedded tiny model on a laptop; config `resources:` and
# the SLURM profile's set-resources override them.
_DEFAULT_RESOURCES = {
    "data": {"mem_mb": 1000, "runtime": 10, "threads": 1},
    "tokenizer": {"mem_mb": 1000, "runtime": 10, "threads": 1},
    "reference": {"mem_mb": 4000, "runtime": 60, "threads": 1},
    "unlearn": {"mem_mb": 4000, "runtime": 60, "threads": 1},
    "quantize": {"mem_mb": 4000, "runtime": 30, "threads": 1},
    "evaluate": {"mem_mb": 4000, "runtime": 60, "threads": 1},
    "diagnose": {"mem_mb": 4000, "runtime": 30, "threads": 1},
    "report": {"mem_mb": 2000, "runtime": 10, "threads": 1},
}
_MODEL_STAGES = {"reference", "unlearn", "quantize", "evaluate", "diagnose"}


def stage_resources(stage):
    """mem_mb, runtime (minutes) and gpu for a stage; gpu is 1 only for model-running stages
    when the config's device is cuda (or auto with a GPU visible)."""
    merged = {**_DEFAULT_RESOURCES[stage], **config["resources"].get(stage, {})}
    return {"mem_mb": merged["mem_mb"], "runtime": merged["runtime"],
            "gpu": GPU if stage in _MODEL_STAGES else 0}


def stage_threads(stage):
    return config["resources"].get(stage, {}).get("threads", _DEFAULT_RESOURCES[stage]["threads"])


def run_dir(w):
    return f"results/{w.bench}/{w.method}/{w.hp}/s{w.seed}"


def as_json(obj):
    """A stage's settings as the JSON its `relapse` subcommand reads; stable, so that
    Snakemake's params trigger reruns a job exactly when its settings change."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_settings(**settings):
    return as_json({**settings, "device": config["device"]})


def data_settings(bench):
    """The data stage's settings: the corpus; the reference models' prompt template that its QA
    texts are written in and its manifest hands to every later stage; and the relearning
    attack's split of the forget people (relapse.data.relearn_split), made with the corpus so
    every model of a bench is attacked and scored on the same parts."""
    resolved = grid.resolved_bench(config, bench)
    return as_json({"corpus": resolved["corpus"],
                    "template": resolved["reference"].get("template", "qa"),
                    "relearn": {"heldout": config["attacks"]["relearn"]["heldout"]}})


ENV = "../../envs/relapse.yaml"


# A local source (model folder, GGUF file, dataset snapshot) is not an output of this workflow,
# so Snakemake never looks inside it: its content fingerprint is a parameter of the job that
# reads it, and a change of content reruns that job and everything downstream (relapse.fingerprint).
def reference_fingerprint(bench, which):
    from relapse.models.pretrained import model_source

    ref = config["benchmarks"][bench]["reference"]
    prints = {which: local_fingerprint(model_source(ref, which)[0])}
    if which == "retrain":     # the retrain folder gets the target's tokenizer
        prints["tokenizer"] = local_fingerprint(model_source(ref, "target")[0])
    return as_json(prints)


def gguf_fingerprint(bench):
    from relapse.models.gguf import find_gguf

    try:
        return local_fingerprint(str(find_gguf(config["benchmarks"][bench]["reference"])))
    except FileNotFoundError:
        return ""              # the job itself says what is missing


def corpus_fingerprint(bench):
    return local_fingerprint(grid.resolved_bench(config, bench)["corpus"].get("source"))


def quantize_source(w):
    """Baselines are quantized from their reference folder, unlearned models from their
    unlearned/ folder (a LoRA run's: its adapter, merged over the target on load)."""
    if w.method in grid.BASELINES:
        return f"results/{w.bench}/reference/{w.method}"
    return f"{run_dir(w)}/unlearned"


def quantize_inputs(w):
    """The model to quantize; the prepared data for calibrating schemes; and, for a LoRA run
    under `lora_merge: adapter`, the target's quantized folder, whose weights are its base."""
    inputs = {"source": quantize_source(w)}
    if get_quantizer(QUANTS[w.quant]["scheme"]).needs_data:
        inputs["data"] = f"results/{w.bench}/data"
    lora = w.method not in grid.BASELINES and grid.parse_hp_id(w.hp).get("params") == "lora"
    if lora and w.method not in ONE_SHOT:
        # the base the adapter checkpoint points at (relapse.models.adapter): a rewritten base
        # reruns the cell, and one changed behind Snakemake's back fails on its fingerprint
        inputs["lora_base"] = f"results/{w.bench}/reference/target"
    if config["quantization"]["lora_merge"] == "adapter" and lora:
        seed = grid.reference_seed(config, w.bench)
        inputs["base"] = f"results/{w.bench}/target/default/s{seed}/{w.quant}/model"
    return inputs


def pretrained_base(bench):
    """The base model folder of a bench on a pretrained GGUF model (directly, or through
    `base:`), or None."""
    root = config["benchmarks"][bench].get("base", bench)
    return f"results/{root}/reference/base" if root in GGUF else None


def optional_flag(flag, input, key):
    return f"{flag} {input[key]}" if key in input.keys() else ""


def diagnose_inputs(w):
    """Full-precision target and unlearned models and both quantized under every scheme that
    changes the weights: what the survival diagnostics compare."""
    seed = grid.reference_seed(config, w.bench)
    quants = quantize_plan.diagnosed_quants(config)
    return {
        "target": f"results/{w.bench}/reference/target",
        "unlearned": f"{run_dir(w)}/unlearned",
        "data": f"results/{w.bench}/data",
        "target_quant": [f"results/{w.bench}/target/default/s{seed}/{q}/model" for q in quants],
        "unlearned_quant": [f"{run_dir(w)}/{q}/model" for q in quants],
    }


def quantize_output(path):
    return temp(path) if config["quantization"]["temp_models"] else path


# PrivLeak compares each model's Min-K% AUC with a retrain model's (evaluation.privleak.reference):
# the full-precision retrain's (`full`, MUSE's definition) and/or the retrain's at the same quant
# (`matched`). So every evaluation job waits for the retrain evaluation it is compared with,
# unless it is that evaluation itself (relapse.evaluate.stage.self_references).
from relapse.evaluate.metrics.privleak import full_precision_quant, reference_names

# TOFU's forget quality compares with the same retrain cell (its per-item truth ratios).
PRIVLEAK_REFERENCES = (reference_names(config["evaluation"]["privleak"])
                       if {"privleak", "tofu"} & set(config["evaluation"]["metrics"]) else [])
FULL_QUANT = full_precision_quant(QUANTS)   # there is one when `full` is (validate checks)


def privleak_reference_input(reference):
    """An input function: the retrain metrics that PrivLeak's `reference` compares this cell
    with, or nothing when it is not configured or the cell is that retrain cell itself."""

    def inputs(w):
        if reference not in PRIVLEAK_REFERENCES:
            return []
        quant = w.quant if reference == "matched" else FULL_QUANT
        if w.method == "retrain" and w.quant == quant:
            return []
        seed = grid.reference_seed(config, w.bench)
        return f"results/{w.bench}/retrain/default/s{seed}/{quant}/metrics.parquet"

    return inputs


# Attack rules (attack.smk): the cells they read.
def _cell(w):
    return f"results/{w.bench}/{w.method}/{w.hp}/s{w.seed}/{w.quant}"


def _reference_cell(w, which):
    """The target's or retrain's cell at this quant: a quantized cell is compared with the
    references quantized the same way."""
    seed = grid.reference_seed(config, w.bench)
    return f"results/{w.bench}/{which}/default/s{seed}/{w.quant}/model"


def _represent_settings():
    """The measures' settings (not which cells run them: a change there reruns nothing)."""
    return {k: v for k, v in config["attacks"]["represent"].items()
            if k not in ("enabled", "quants", "attacked")}


def attack_retrain_metrics(reference):
    """PrivLeak's retrain reference of an attacked cell: the un-attacked retrain cell (an
    attacked retrain model is not its own reference)."""

    def inputs(w):
        if reference not in PRIVLEAK_REFERENCES:
            return []
        quant = w.quant if reference == "matched" else FULL_QUANT
        seed = grid.reference_seed(config, w.bench)
        return f"results/{w.bench}/retrain/default/s{seed}/{quant}/metrics.parquet"

    return inputs


def settings_file(stage, settings):
    """`settings` as a JSON file named by its content (so a job never reads another config's
    settings), written atomically under .snakemake/relapse/; its path for `--settings @PATH`."""
    import hashlib

    from relapse.io import atomic_file

    text = as_json(settings)
    path = f".snakemake/relapse/{stage}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not os.path.exists(path):
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return path


# LLMEraser's LoRA setting (lora_setting.smk).
def one_shot_inputs(w):
    """A one-shot method needs the LoRA setting: the base its adapter sits on, the target's
    adapter, the instance table, and the gold (for the agreement table only). Validation
    (relapse.config_checks) refuses a one-shot method without lora_setting or with
    lora_merge: adapter."""
    root = f"results/{w.bench}"
    return {
        "base": f"{root}/reference/base",
        "target": f"{root}/reference/target",
        "gold": f"{root}/reference/retrain",
        "instances": f"{root}/lora_setting",
    }


# quantization.models: selected (select.smk): only each method's selected hp is quantized. The
# selection is a checkpoint, so what the report, the diagnostics and the quantize jobs need is
# known only once it has run.
def chosen_hps():
    """bench -> {(method, hp)} from the select_hps checkpoints, or None when every hp is
    quantized (quantization.models: all)."""
    if not grid.quantizes_selected(config):
        return None
    from relapse.report.selection import read_selection

    return {b: read_selection(checkpoints.select_hps.get(bench=b).output[0]) for b in BENCHES}


def report_cells():
    return grid.cells(config, chosen_hps())


def report_metrics(w):
    return [cell.metrics for cell in report_cells()]


def report_samples(w):
    return [f"{cell.root}/{cell.quant}/samples.parquet" for cell in report_cells()]


def report_diagnostics(w):
    return quantize_plan.diagnostics_files(config, chosen_hps())


# What is known before any selection (the baselines at every quant, every hp at the selection
# quant): `all` asks for it directly, so the baselines' quantize and evaluate jobs run beside the
# unlearning instead of waiting for the checkpoint.
PRESELECTION_METRICS = ([cell.metrics for cell in grid.cells(config)]
                        if grid.quantizes_selected(config) else [])


def selection_metrics(w):
    return [cell.metrics for cell in grid.selection_cells(config, w.bench)]


# attacks.hps: selected: the unlearned models attacked are each method's hp that the select_hps
# checkpoint (select.smk) picks, so their cells, and the inputs of the tables and the
# representation files that name them, are known only once it has run (input functions below);
# before, ATTACK_CELLS holds the baselines' cells.


def attack_selection():
    """bench -> {(method, hp)} from the select_hps checkpoints of the attacked benches under
    attacks.hps: selected; None otherwise (the static slice)."""
    if not attack_plan.follows_selection(config):
        return None
    from relapse.report.selection import read_selection

    benches = config["attacks"].get("benchmarks") or BENCHES
    return {b: read_selection(checkpoints.select_hps.get(bench=b).output[0]) for b in benches}


def attack_cell_metrics(w):
    return [c.metrics for c in attack_plan.attack_cells(config, attack_selection())]


def attack_base_metrics(w):
    return [c.metrics for c in attack_plan.baseline_cells(config, attack_selection())]


def attack_represent_files(w):
    return attack_plan.represent_files(config, attack_selection())


def durability_samples(w):
    return attack_plan.durability_samples(config, attack_selection())


def report_attack_samples(w):
    """The attacked cells' samples once the config attacks a model (report.smk)."""
    attacked = bool(attack_plan.attack_cells(config)) or attack_plan.attacks_unlearned(config)
    return durability_samples(w) if attacked else []


def report_represent_files(w):
    return attack_represent_files(w) if attack_plan.attacks_represent(config) else []
