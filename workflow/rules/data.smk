rule prepare_data:
    output:
        directory("results/{bench}/data"),
    wildcard_constraints:
        bench=alternatives(SYNTHETIC_ONLY),
    params:
        settings=lambda w: data_settings(w.bench),
    log:
        "logs/prepare_data/{bench}.log",
    benchmark:
        "results/benchmarks/prepare_data/{bench}.tsv"
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    shell:
        "relapse prepare-data --settings {params.settings:q} --bench {wildcards.bench} "
        "--out {output} > {log} 2>&1"


# A bench on a pretrained base (reference.kind: gguf) also keeps the real-world facts that the
# base answers (the `world` utility split), so its data stage waits for the base and runs it.


rule prepare_data_pretrained:
    input:
        base=lambda w: pretrained_base(w.bench),
    output:
        directory("results/{bench}/data"),
    wildcard_constraints:
        bench=alternatives(ON_PRETRAINED),
    params:
        settings=lambda w: data_settings(w.bench),
    log:
        "logs/prepare_data/{bench}.log",
    benchmark:
        "results/benchmarks/prepare_data/{bench}.tsv"
    threads: stage_threads("data")
    resources:
        **{**stage_resources("data"), "mem_mb": stage_resources("reference")["mem_mb"]},
    conda:
        ENV
    shell:
        "relapse prepare-data --settings {params.settings:q} --bench {wildcards.bench} "
        "--base {input.base} --out {output} --threads {threads} > {log} 2>&1"


# A registered hub corpus (corpus.kind muse or tofu): read from its source (hub id or local
# snapshot) and cut into training chunks by the reference target's tokenizer.


# A hub corpus is checked (configs and splits, from the repository's metadata) before the
# reference models it is paired with are downloaded: a mistyped corpus fails in seconds, not
# after a 7B download (fetch_pretrained takes this file as an input).
rule check_corpus:
    output:
        "results/{bench}/corpus_check.json",
    wildcard_constraints:
        bench=alternatives(HUB_CORPUS),
    params:
        # no content fingerprint: the check reads names, not data (a local snapshot's content
        # is checked at validation, and its edits rerun prepare_corpus)
        settings=lambda w: as_json({"corpus": grid.resolved_bench(config, w.bench)["corpus"]}),
    log:
        "logs/check_corpus/{bench}.log",
    benchmark:
        "results/benchmarks/check_corpus/{bench}.tsv"
    threads: 1
    resources:
        **stage_resources("data"),
    conda:
        ENV
    shell:
        "relapse check-corpus --settings {params.settings:q} --bench {wildcards.bench} "
        "--out {output} > {log} 2>&1"


rule prepare_corpus:
    input:
        tokenizer="results/{bench}/reference/target",
    output:
        directory("results/{bench}/data"),
    wildcard_constraints:
        bench=alternatives(HUB_CORPUS),
    params:
        settings=lambda w: data_settings(w.bench),
        source=lambda w: corpus_fingerprint(w.bench),
    log:
        "logs/prepare_data/{bench}.log",
    benchmark:
        "results/benchmarks/prepare_data/{bench}.tsv"
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    shell:
        "relapse prepare-data --settings {params.settings:q} --bench {wildcards.bench} "
        "--tokenizer {input.tokenizer} --out {output} > {log} 2>&1"
