# The report: every cell's metrics -> one Parquet table, the paper tables (Markdown, LaTeX, CSV)
# and figures (PNG, SVG). Every table and figure goes into `snakemake --report` with its caption
# from workflow/report/; the file names come from relapse.report.plan.

from relapse.report import plan as report_plan


report: "../report/workflow.rst"


# Optional inputs: survival diagnostics files and a relearning-curves table, once stages write
# them. The matching figure becomes an output exactly when its input list is non-empty.
REPORT_DIAGNOSTICS = quantize_plan.has_diagnostics(config)
REPORT_RELEARN = RELEARN_CURVES   # attack.smk: the relearning-curves table, when relearning runs
# Over the whole attack matrix (relapse.report.meta_eval): the attack table, the attacked cells'
# per-item scores and the repr files become inputs once the config attacks a model.
# Under attacks.hps: selected the attacked cells are known only after the select_hps checkpoint,
# so the samples and repr files are input functions (attack.smk) and whether any exist is
# decided from the config alone.
REPORT_ATTACKED = bool(ATTACK_CELLS) or attack_plan.attacks_unlearned(config)
REPORT_ATTACKS = [attack_plan.ATTACKS_TABLE] if REPORT_ATTACKED else []
REPORT_REPRESENTS = attack_plan.attacks_represent(config)
REPORT_META = report_plan.meta_parts(
    grid.quant_settings(config), attacked=REPORT_ATTACKED, relearn=bool(REPORT_RELEARN),
    diagnosed=bool(REPORT_DIAGNOSTICS) or REPORT_REPRESENTS)


# Every input of the report, checked in a job of its own: Snakemake removes a job's old outputs
# when it starts, so a bad input found by the report itself would cost the previous tables.
rule check_cells:
    input:
        report_metrics,
    output:
        f"{report_plan.TABLES_DIR}/cells.csv",
    log:
        "logs/report/check_cells.log",
    benchmark:
        "results/benchmarks/report/check_cells.tsv"
    threads: 1
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse check-cells --out {output} {input} > {log} 2>&1"


rule report:
    input:
        checked=rules.check_cells.output,
        metrics=report_metrics,
        # Per-item scores: the intervals resample seeds and items, and pair the items of an
        # unlearned model with the target's for knowledge retained.
        samples=report_samples,
        diagnostics=report_diagnostics,
        relearn=REPORT_RELEARN,
        attacks=REPORT_ATTACKS,
        attack_samples=report_attack_samples,
        represent=report_represent_files,
    output:
        **{
            key: (
                report(o.path, caption=o.caption, category=o.category,
                       subcategory=o.subcategory, labels=o.labels)
                if o.caption
                else o.path
            )
            for key, o in report_plan.outputs(
                diagnostics=bool(REPORT_DIAGNOSTICS), relearn=bool(REPORT_RELEARN),
                meta=REPORT_META,
                attacks=bool(REPORT_ATTACKS),
            ).items()
        },
    params:
        # The whole config goes into the tables' provenance, so the report reruns on any change.
        settings=as_json({"config": config}),
        # ... but the command reads it from a file: Linux caps one argument (the whole `bash -c`
        # script) at 128 KiB, and a large grid's config is bigger.
        settings_file=lambda w: settings_file("report", {"config": config}),
        optional=lambda w, input: report_plan.optional_flags(
            input.diagnostics, input.relearn, REPORT_META, input.attacks, input.attack_samples,
            input.represent),
    log:
        "logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse report --settings @{params.settings_file:q} --table {output.table} "
        f"--tables {report_plan.TABLES_DIR} --figures {report_plan.FIGURES_DIR} "
        "{input.metrics}{params.optional} --samples {input.samples} > {log} 2>&1"


# The durability ranking (relapse.report.ranking): each method at its selected hp, from the
# durability table (attack.smk) and KnowMem_r of the metrics table; a target of `all` only when
# an unlearned model is attacked.
RANKING_OUTPUTS = report_plan.ranking_outputs()
RANKING_TARGETS = [o.path for o in RANKING_OUTPUTS.values()] if DURABILITY else []


rule ranking:
    input:
        durability=f"{attack_plan.DURABILITY_STEM}.csv",
        metrics=rules.report.output.table,
    output:
        **{
            key: report(o.path, caption=o.caption, category=o.category,
                        subcategory=o.subcategory, labels=o.labels)
            for key, o in RANKING_OUTPUTS.items()
        },
    log:
        "logs/report/ranking.log",
    benchmark:
        "results/benchmarks/report/ranking.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    shell:
        "relapse ranking --settings '{{}}' --durability {input.durability} "
        "--metrics {input.metrics} "
        f"--out {report_plan.TABLES_DIR}/{report_plan.RANKING} "
        f"--figure {report_plan.FIGURES_DIR}/{report_plan.RANKING_FIGURE} > {{log}} 2>&1"
