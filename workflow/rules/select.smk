# quantization.models: selected: each method's hp is picked at the selection quant (report.selection,
# the seed paper's utility constraint) before anything else is quantized. A checkpoint: the report
# and the diagnostics ask for the quantized cells of the hps it chose, and of no other.


checkpoint select_hps:
    input:
        selection_metrics,
    output:
        "results/{bench}/selection.csv",
    params:
        # only the selection rule: another change of the config does not re-select
        settings=lambda w: settings_file("select", {"config": {"report": config["report"]}}),
    log:
        "logs/select_hps/{bench}.log",
    benchmark:
        "results/benchmarks/select_hps/{bench}.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse select --settings @{params.settings:q} --out {output} {input} > {log} 2>&1"
