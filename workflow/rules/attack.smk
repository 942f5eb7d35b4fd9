# Attacks beyond quantization (relapse.attacks): each attack turns a model cell
# {bench}/{method}/{hp}/s{seed}/{quant} into one model folder per variant
# ({quant}/{attack}/models/{variant}), scored by `evaluate_attack` exactly as `evaluate` scores a
# cell; the rows carry attack, attack_data, attack_steps, sparsity. `represent` compares an
# unlearned cell's hidden states and Fisher with the target's and the retrain's, per layer;
# `represent_attack` does the same for its attacked model folders (attacks.represent.attacked).
# Which cells: config `attacks:` (relapse.attacks.plan); no quant listed, no rule here runs.

from relapse.attacks import plan as attack_plan
from relapse.attacks.registry import attack_names

# The slice was checked by relapse.config.validate (relapse.attacks.plan.check). Under
# attacks.hps: selected the attacked cells follow the select_hps checkpoint: the input
# functions (attack_selection and those after it) are in common.smk.
ATTACK_CELLS = attack_plan.attack_cells(config)
# The report plots the relearning curves (report.smk) when relearning runs.
RELEARN_CURVES = [attack_plan.RELEARN_TABLE] if attack_plan.attacks_relearn(config) else []
# The durability table needs an attacked unlearned model (and the report's hp selection).
DURABILITY = (
    [f"{attack_plan.DURABILITY_STEM}.md", f"{attack_plan.DURABILITY_STEM}.csv",
     attack_plan.LABELS_TABLE]
    if attack_plan.attacks_unlearned(config)
    else []
)
# The static cells are targets too: under hps: selected the baselines' attacks then run beside
# the unlearning instead of waiting for the checkpoint (as PRESELECTION_METRICS, common.smk).
ATTACK_TARGETS = (
    [attack_plan.ATTACKS_TABLE, attack_plan.RELEARN_TABLE]
    if ATTACK_CELLS or DURABILITY else []
) + DURABILITY + [c.metrics for c in ATTACK_CELLS]


wildcard_constraints:
    attack=alternatives(attack_names()),
    variant=r"[A-Za-z0-9.+\-]+",


rule attack:
    input:
        model="results/{bench}/{method}/{hp}/s{seed}/{quant}/model",
        data="results/{bench}/data",
    output:
        # deleted with the quantized models once evaluated (quantization.temp_models)
        quantize_output(directory("results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/models")),
    params:
        settings=lambda w: model_settings(
            attack=config["attacks"][w.attack], lora=config["unlearning"]["lora"]
        ),
    log:
        "logs/attack/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}.log",
    benchmark:
        "results/benchmarks/attack/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}.tsv"
    threads: stage_threads("unlearn")
    resources:
        **stage_resources("unlearn"),
    conda:
        ENV
    shell:
        "relapse attack --settings {params.settings:q} --attack {wildcards.attack} "
        "--seed {wildcards.seed} --source {input.model} --data {input.data} --out {output} "
        "--threads {threads} > {log} 2>&1"


rule evaluate_attack:
    input:
        models="results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/models",
        data="results/{bench}/data",
        full_retrain=attack_retrain_metrics("full"),
        matched_retrain=attack_retrain_metrics("matched"),
    output:
        metrics="results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}/metrics.parquet",
        samples="results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}/samples.parquet",
    params:
        settings=lambda w: model_settings(evaluation=config["evaluation"], quant=QUANTS[w.quant]),
        retrain=lambda w, input: " ".join(
            f"{flag} {input[key]}"
            for flag, key in (
                ("--full-retrain-metrics", "full_retrain"),
                ("--retrain-metrics", "matched_retrain"),
            )
            if input[key]
        ),
    log:
        "logs/evaluate_attack/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate_attack/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}.tsv"
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    shell:
        "relapse evaluate --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --hp {wildcards.hp} --seed {wildcards.seed} "
        "--quant {wildcards.quant} --model {input.models}/{wildcards.variant} "
        "--data {input.data} {params.retrain} --metrics {output.metrics} "
        "--samples {output.samples} --threads {threads} > {log} 2>&1"


rule attack_tables:
    input:
        attacked=attack_cell_metrics,
        base=attack_base_metrics,
    output:
        attacks=attack_plan.ATTACKS_TABLE,
        relearn=attack_plan.RELEARN_TABLE,
    params:
        settings=as_json({"config": {"attacks": config["attacks"]}}),
    log:
        "logs/attack_tables/attack_tables.log",
    benchmark:
        "results/benchmarks/attack_tables/attack_tables.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse attack-tables --settings {params.settings:q} --attacks-out {output.attacks} "
        "--relearn-out {output.relearn} --attack-metrics {input.attacked} "
        "--base-metrics {input.base} > {log} 2>&1"


rule represent:
    input:
        model="results/{bench}/{method}/{hp}/s{seed}/{quant}/model",
        target=lambda w: _reference_cell(w, "target"),
        retrain=lambda w: _reference_cell(w, "retrain"),
        data="results/{bench}/data",
    output:
        table="results/{bench}/{method}/{hp}/s{seed}/{quant}/repr.parquet",
        figure=multiext("results/{bench}/{method}/{hp}/s{seed}/{quant}/repr_layers", ".png", ".svg"),
    params:
        settings=lambda w: model_settings(
            represent=_represent_settings(),
            dtype=config["evaluation"]["dtype"],
        ),
        figure=lambda w: f"{_cell(w)}/repr_layers",
    log:
        "logs/represent/{bench}/{method}/{hp}/s{seed}/{quant}.log",
    benchmark:
        "results/benchmarks/represent/{bench}/{method}/{hp}/s{seed}/{quant}.tsv"
    threads: stage_threads("diagnose")
    resources:
        **stage_resources("diagnose"),
    conda:
        ENV
    shell:
        "relapse represent --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --hp {wildcards.hp} --seed {wildcards.seed} "
        "--quant {wildcards.quant} --model {input.model} --target {input.target} "
        "--retrain {input.retrain} --data {input.data} --out {output.table} "
        "--figure {params.figure} --threads {threads} > {log} 2>&1"


# With attacks.represent.attacked: an attacked model folder (relearned at k, pruned at s) against
# the un-attacked target and retrain at the same quant; its rows carry the attack's key columns.
rule represent_attack:
    input:
        models="results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/models",
        target=lambda w: _reference_cell(w, "target"),
        retrain=lambda w: _reference_cell(w, "retrain"),
        data="results/{bench}/data",
    output:
        table="results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}/repr.parquet",
        figure=multiext(
            "results/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}/repr_layers",
            ".png", ".svg",
        ),
    params:
        settings=lambda w: model_settings(
            represent=_represent_settings(), dtype=config["evaluation"]["dtype"]
        ),
        figure=lambda w: f"{_cell(w)}/{w.attack}/{w.variant}/repr_layers",
    log:
        "logs/represent_attack/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}.log",
    benchmark:
        "results/benchmarks/represent_attack/{bench}/{method}/{hp}/s{seed}/{quant}/{attack}/{variant}.tsv"
    threads: stage_threads("diagnose")
    resources:
        **stage_resources("diagnose"),
    conda:
        ENV
    shell:
        "relapse represent --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --hp {wildcards.hp} --seed {wildcards.seed} "
        "--quant {wildcards.quant} --model {input.models}/{wildcards.variant} "
        "--target {input.target} --retrain {input.retrain} --data {input.data} "
        "--out {output.table} --figure {params.figure} --threads {threads} > {log} 2>&1"


rule durability:
    input:
        attacks=attack_plan.ATTACKS_TABLE,
        metrics="results/tables/metrics.parquet",
        selection="results/tables/selection.csv",
        # per-item scores: the verdict pairs the models' answers item by item
        samples=durability_samples,
    output:
        md=f"{attack_plan.DURABILITY_STEM}.md",
        csv=f"{attack_plan.DURABILITY_STEM}.csv",
        labels=attack_plan.LABELS_TABLE,
    params:
        settings=as_json({"label": config["attacks"]["label"],
                          "bootstrap": config["evaluation"]["bootstrap"]}),
    log:
        "logs/durability/durability.log",
    benchmark:
        "results/benchmarks/durability/durability.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse durability --settings {params.settings:q} --attacks {input.attacks} "
        "--metrics {input.metrics} --selection {input.selection} "
        f"--out {attack_plan.DURABILITY_STEM} --labels {{output.labels}} "
        "--samples {input.samples} > {log} 2>&1"
