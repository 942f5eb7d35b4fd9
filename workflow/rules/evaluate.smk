rule evaluate:
    input:
        model="results/{bench}/{method}/{hp}/s{seed}/{quant}/model",
        data="results/{bench}/data",
        full_retrain=privleak_reference_input("full"),
        matched_retrain=privleak_reference_input("matched"),
    output:
        metrics="results/{bench}/{method}/{hp}/s{seed}/{quant}/metrics.parquet",
        samples="results/{bench}/{method}/{hp}/s{seed}/{quant}/samples.parquet",
    params:
        settings=lambda w: model_settings(evaluation=config["evaluation"], quant=QUANTS[w.quant]),
        retrain=lambda w, input: " ".join(
            f"{flag} {input[key]}" for flag, key in (("--full-retrain-metrics", "full_retrain"),
                                                     ("--retrain-metrics", "matched_retrain"))
            if input[key]),
    log:
        "logs/evaluate/{bench}/{method}/{hp}/s{seed}/{quant}.log",
    benchmark:
        "results/benchmarks/evaluate/{bench}/{method}/{hp}/s{seed}/{quant}.tsv"
    group:
        "cell_{bench}_{method}_{hp}_s{seed}_{quant}"
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    shell:
        "relapse evaluate --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --hp {wildcards.hp} --seed {wildcards.seed} "
        "--quant {wildcards.quant} --model {input.model} --data {input.data} {params.retrain} "
        "--metrics {output.metrics} --samples {output.samples} --threads {threads} > {log} 2>&1"
