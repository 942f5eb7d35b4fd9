# LLMEraser's LoRA setting (benchmarks.NAME.lora_setting; relapse.data.edits,
# relapse.models.lora_setting, relapse.unlearn.oneshot.llmeraser). The bench's usual retrain
# model becomes the base (reference/base, never saw the forget people); its target and retrain
# are replaced by base + a LoRA adapter fine-tuned on the target's instances and on the gold's
# (edited instances removed or corrected). Both then flow through quantize and evaluate as the
# `target` and `retrain` baselines, and one-shot methods update the target's adapter.


rule prepare_lora_setting:
    input:
        data="results/{bench}/data",
    output:
        directory("results/{bench}/lora_setting"),
    wildcard_constraints:
        bench=alternatives(LORA_SETTING),
    params:
        settings=lambda w: as_json({"lora_setting": config["benchmarks"][w.bench]["lora_setting"]}),
    log:
        "logs/prepare_lora_setting/{bench}.log",
    benchmark:
        "results/benchmarks/prepare_lora_setting/{bench}.tsv"
    threads: 1
    resources:
        **stage_resources("data"),
    conda:
        ENV
    shell:
        "relapse prepare-lora-setting --settings {params.settings:q} --bench {wildcards.bench} "
        "--data {input.data} --out {output} > {log} 2>&1"


rule train_lora_base:
    input:
        data="results/{bench}/data",
        tokenizer="results/{bench}/reference/tokenizer",
    output:
        directory("results/{bench}/reference/base"),
    wildcard_constraints:
        bench=alternatives(LORA_SETTING),
    params:
        settings=lambda w: model_settings(reference=config["benchmarks"][w.bench]["reference"]),
    log:
        "logs/train_lora_base/{bench}.log",
    benchmark:
        "results/benchmarks/train_lora_base/{bench}.tsv"
    threads: stage_threads("reference")
    resources:
        **stage_resources("reference"),
    conda:
        ENV
    shell:
        "relapse train-reference --settings {params.settings:q} --bench {wildcards.bench} "
        "--which retrain --data {input.data} --tokenizer {input.tokenizer} "
        "--out {output} --threads {threads} > {log} 2>&1"


# A LoRA-setting bench is also a `kind: train` bench, whose reference/{target,retrain} rule
# train_reference would produce from scratch: here they are LoRA fine-tunes of the base.
ruleorder: train_lora_reference > train_reference


rule train_lora_reference:
    input:
        base="results/{bench}/reference/base",
        instances="results/{bench}/lora_setting",
    output:
        directory("results/{bench}/reference/{ref}"),
    wildcard_constraints:
        bench=alternatives(LORA_SETTING),
        ref="target|retrain",
    params:
        settings=lambda w: model_settings(
            lora_setting=config["benchmarks"][w.bench]["lora_setting"]
        ),
    log:
        "logs/train_lora_reference/{bench}/{ref}.log",
    benchmark:
        "results/benchmarks/train_lora_reference/{bench}/{ref}.tsv"
    threads: stage_threads("reference")
    resources:
        **stage_resources("reference"),
    conda:
        ENV
    shell:
        "relapse train-lora-reference --settings {params.settings:q} --bench {wildcards.bench} "
        "--which {wildcards.ref} --base {input.base} --items {input.instances} "
        "--out {output} --threads {threads} > {log} 2>&1"


rule unlearn_one_shot:
    input:
        unpack(one_shot_inputs),
    output:
        directory("results/{bench}/{method}/{run}/s{seed}/run"),
    wildcard_constraints:
        method=alternatives(ONE_SHOT),
        run="[^/]+",
    params:
        settings=lambda w: model_settings(**grid.method_runs(config, w.method)[w.run]),
    log:
        "logs/unlearn_one_shot/{bench}/{method}/{run}/s{seed}.log",
    benchmark:
        "results/benchmarks/unlearn_one_shot/{bench}/{method}/{run}/s{seed}.tsv"
    threads: stage_threads("unlearn")
    resources:
        **stage_resources("unlearn"),
    conda:
        ENV
    shell:
        "relapse unlearn-one-shot --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --hp {wildcards.run} --seed {wildcards.seed} "
        "--base {input.base} --target {input.target} --gold {input.gold} "
        "--items {input.instances} --out {output} --threads {threads} > {log} 2>&1"


# LLMEraser's agreement with the gold, collected over the run (relapse.report.llmeraser):
# results/tables/llmeraser.{parquet,md}, only when the config runs llmeraser on a LoRA-setting bench.
from relapse.report import llmeraser as llmeraser_report

LLMERASER_INPUTS = llmeraser_report.plan(config, LORA_SETTING)
LLMERASER_TABLES = list(llmeraser_report.OUTPUTS.values()) if LLMERASER_INPUTS else []


# Defined in every config (the SLURM profile lists every rule), requested only by rule all when
# LLMERASER_TABLES is non-empty.
rule llmeraser_table:
    input:
        **LLMERASER_INPUTS,
    output:
        **llmeraser_report.OUTPUTS,
    params:
        settings_file=lambda w: settings_file("llmeraser_table", {"config": config}),
        # BENCH=results/BENCH/lora_setting
        lora_setting=" ".join(f"{p.split('/')[1]}={p}" for p in LLMERASER_INPUTS.get("lora_setting", [])),
    log:
        "logs/llmeraser_table/llmeraser_table.log",
    benchmark:
        "results/benchmarks/llmeraser_table/llmeraser_table.tsv"
    threads: 1
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse llmeraser-table --settings @{params.settings_file:q} "
        "--table {output.table} --markdown {output.markdown} "
        "--unlearned {input.unlearned} --samples {input.samples} --items {params.lora_setting} "
        "> {log} 2>&1"
