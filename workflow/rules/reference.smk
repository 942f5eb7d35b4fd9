rule train_tokenizer:
    input:
        data="results/{bench}/data",
    output:
        directory("results/{bench}/reference/tokenizer"),
    wildcard_constraints:
        bench=alternatives(TRAINED),
    params:
        settings=lambda w: as_json(
            config["benchmarks"][w.bench]["reference"].get("tokenizer", {})
        ),
    log:
        "logs/train_tokenizer/{bench}.log",
    benchmark:
        "results/benchmarks/train_tokenizer/{bench}.tsv"
    threads: stage_threads("tokenizer")
    resources:
        **stage_resources("tokenizer"),
    conda:
        ENV
    shell:
        "relapse train-tokenizer --settings {params.settings:q} --bench {wildcards.bench} "
        "--data {input.data} --out {output} > {log} 2>&1"


rule train_reference:
    input:
        data="results/{bench}/data",
        tokenizer="results/{bench}/reference/tokenizer",
    output:
        directory("results/{bench}/reference/{ref}"),
    wildcard_constraints:
        bench=alternatives(TRAINED),
        ref="target|retrain",
    params:
        settings=lambda w: model_settings(reference=config["benchmarks"][w.bench]["reference"]),
    log:
        "logs/train_reference/{bench}/{ref}.log",
    benchmark:
        "results/benchmarks/train_reference/{bench}/{ref}.tsv"
    threads: stage_threads("reference")
    resources:
        **stage_resources("reference"),
    conda:
        ENV
    shell:
        "relapse train-reference --settings {params.settings:q} --bench {wildcards.bench} "
        "--which {wildcards.ref} --data {input.data} --tokenizer {input.tokenizer} "
        "--out {output} --threads {threads} > {log} 2>&1"


rule snap_reference:
    input:
        source=lambda w: f"results/{config['benchmarks'][w.bench]['base']}/reference/{w.ref}",
    output:
        directory("results/{bench}/reference/{ref}"),
    wildcard_constraints:
        bench=alternatives(SNAPPED),
        ref="target|retrain",
    params:
        settings=lambda w: as_json({"snap": config["benchmarks"][w.bench]["reference"]["snap"]}),
    log:
        "logs/snap_reference/{bench}/{ref}.log",
    benchmark:
        "results/benchmarks/snap_reference/{bench}/{ref}.tsv"
    threads: stage_threads("reference")
    resources:
        **stage_resources("reference"),
    conda:
        ENV
    shell:
        "relapse snap-reference --settings {params.settings:q} --bench {wildcards.bench} "
        "--source {input.source} --out {output} --threads {threads} > {log} 2>&1"


# kind: gguf: the pretrained base, loaded once from its GGUF file and kept as safetensors; target
# and retrain are that base fine-tuned on their people (LoRA, merged), with no tokenizer step.


rule load_gguf:
    output:
        directory("results/{bench}/reference/base"),
    wildcard_constraints:
        bench=alternatives(GGUF),
    params:
        settings=lambda w: as_json({"reference": {
            k: v for k, v in config["benchmarks"][w.bench]["reference"].items()
            if k in ("kind", "path", "package", "file")}}),
        source=lambda w: gguf_fingerprint(w.bench),
    log:
        "logs/load_gguf/{bench}.log",
    benchmark:
        "results/benchmarks/load_gguf/{bench}.tsv"
    threads: stage_threads("reference")
    resources:
        # reference-sized memory, but no GPU: it only dequantizes a file on the CPU
        **{**stage_resources("reference"), "gpu": 0},
    conda:
        ENV
    shell:
        "relapse load-gguf --settings {params.settings:q} --bench {wildcards.bench} "
        "--out {output} --threads {threads} > {log} 2>&1"


rule finetune_reference:
    input:
        data="results/{bench}/data",
        base="results/{bench}/reference/base",
    output:
        directory("results/{bench}/reference/{ref}"),
    wildcard_constraints:
        bench=alternatives(GGUF),
        ref="target|retrain",
    params:
        settings=lambda w: model_settings(reference=config["benchmarks"][w.bench]["reference"]),
    log:
        "logs/finetune_reference/{bench}/{ref}.log",
    benchmark:
        "results/benchmarks/finetune_reference/{bench}/{ref}.tsv"
    threads: stage_threads("reference")
    resources:
        **stage_resources("reference"),
    conda:
        ENV
    shell:
        "relapse finetune-reference --settings {params.settings:q} --bench {wildcards.bench} "
        "--which {wildcards.ref} --data {input.data} --base {input.base} "
        "--out {output} --threads {threads} > {log} 2>&1"


# kind: pretrained: the published target and retrain models (hub id or local folder, at a
# revision), kept as a model folder of safetensors with the target's tokenizer. No GPU: it only
# downloads and links files.


rule fetch_pretrained:
    input:
        # the corpus checked first, where the bench reads a hub corpus (rule check_corpus);
        # ancient: a corpus re-checked after an edit must not re-fetch the models
        corpus=lambda w: [ancient(f"results/{w.bench}/corpus_check.json")]
        if w.bench in HUB_CORPUS else [],
    output:
        directory("results/{bench}/reference/{ref}"),
    wildcard_constraints:
        bench=alternatives(PRETRAINED),
        ref="target|retrain",
    params:
        settings=lambda w: as_json({"reference": config["benchmarks"][w.bench]["reference"]}),
        source=lambda w: reference_fingerprint(w.bench, w.ref),
    log:
        "logs/fetch_pretrained/{bench}/{ref}.log",
    benchmark:
        "results/benchmarks/fetch_pretrained/{bench}/{ref}.tsv"
    threads: 1
    resources:
        **{**stage_resources("data"), "runtime": stage_resources("reference")["runtime"]},
    conda:
        ENV
    shell:
        "relapse fetch-pretrained --settings {params.settings:q} --bench {wildcards.bench} "
        "--which {wildcards.ref} --out {output} > {log} 2>&1"
