# One training job per run: hp points that differ only in `epochs` share a run, which saves a
# checkpoint at each of those epochs; `select_epoch` exposes each as an unlearned/ model folder.


rule unlearn:
    input:
        target="results/{bench}/reference/target",
        data="results/{bench}/data",
    output:
        directory("results/{bench}/{method}/{run}/s{seed}/run"),
    wildcard_constraints:
        # one-shot methods write the same run folder by rule unlearn_one_shot (lora_setting.smk)
        method=alternatives([m for m in UNLEARN_METHODS if m not in ONE_SHOT]),
        run="[^/]+",
    params:
        settings=lambda w: model_settings(
            **grid.method_runs(config, w.method)[w.run], unlearning=config["unlearning"]
        ),
    log:
        "logs/unlearn/{bench}/{method}/{run}/s{seed}.log",
    benchmark:
        "results/benchmarks/unlearn/{bench}/{method}/{run}/s{seed}.tsv"
    threads: stage_threads("unlearn")
    resources:
        **stage_resources("unlearn"),
    conda:
        ENV
    shell:
        "relapse unlearn --settings {params.settings:q} --bench {wildcards.bench} "
        "--method {wildcards.method} --seed {wildcards.seed} "
        "--target {input.target} --data {input.data} --out {output} --threads {threads} "
        "> {log} 2>&1"


rule select_epoch:
    input:
        run=lambda w: f"results/{w.bench}/{w.method}/{grid.run_of(config, w.method, w.hp)[0]}/s{w.seed}/run",
    output:
        directory("results/{bench}/{method}/{hp}/s{seed}/unlearned"),
    wildcard_constraints:
        method=alternatives(UNLEARN_METHODS),
    params:
        settings=lambda w: as_json({"epoch": grid.run_of(config, w.method, w.hp)[1]}),
    log:
        "logs/select_epoch/{bench}/{method}/{hp}/s{seed}.log",
    benchmark:
        "results/benchmarks/select_epoch/{bench}/{method}/{hp}/s{seed}.tsv"
    threads: 1
    resources:
        **stage_resources("data"),
    conda:
        ENV
    shell:
        "relapse select-epoch --settings {params.settings:q} --run {input.run} "
        "--out {output} > {log} 2>&1"
