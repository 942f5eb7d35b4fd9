rule quantize:
    input:
        unpack(quantize_inputs),
    output:
        quantize_output(directory("results/{bench}/{method}/{hp}/s{seed}/{quant}/model")),
    params:
        settings=lambda w: model_settings(
            quant=QUANTS[w.quant], lora_merge=config["quantization"]["lora_merge"]
        ),
        data=lambda w, input: optional_flag("--data", input, "data"),
        base=lambda w, input: optional_flag("--base-quant", input, "base"),
    log:
        "logs/quantize/{bench}/{method}/{hp}/s{seed}/{quant}.log",
    benchmark:
        "results/benchmarks/quantize/{bench}/{method}/{hp}/s{seed}/{quant}.tsv"
    group:
        "cell_{bench}_{method}_{hp}_s{seed}_{quant}"
    threads: stage_threads("quantize")
    resources:
        **stage_resources("quantize"),
    conda:
        ENV
    shell:
        "relapse quantize --settings {params.settings:q} --source {input.source} "
        "{params.data} {params.base} --out {output} --threads {threads} > {log} 2>&1"


rule diagnose:
    input:
        unpack(diagnose_inputs),
    output:
        "results/{bench}/{method}/{hp}/s{seed}/diagnostics.parquet",
    params:
        settings=lambda w: model_settings(
            diagnostics={
                k: v
                for k, v in config["quantization"]["diagnostics"].items()
                if k != "enabled"
            },
            # the evaluated model's dtype: the weights and activations it computes with
            dtype=config["evaluation"]["dtype"],
        ),
        quants=lambda w: " ".join(quantize_plan.diagnosed_quants(config)),
    log:
        "logs/diagnose/{bench}/{method}/{hp}/s{seed}.log",
    benchmark:
        "results/benchmarks/diagnose/{bench}/{method}/{hp}/s{seed}.tsv"
    threads: stage_threads("diagnose")
    resources:
        **stage_resources("diagnose"),
    conda:
        ENV
    shell:
        "relapse diagnose --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --hp {wildcards.hp} --seed {wildcards.seed} "
        "--target {input.target} --unlearned {input.unlearned} --data {input.data} "
        "--quant {params.quants} --target-quant {input.target_quant} "
        "--unlearned-quant {input.unlearned_quant} --out {output} --threads {threads} > {log} 2>&1"
