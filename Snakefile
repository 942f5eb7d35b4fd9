# relapse: does LLM unlearning survive quantization and relearning?
#
#   data -> tokenizer + reference models -> unlearn (method x hp x seed) -> quantize (scheme x bits)
#        -> evaluate -> report
#
# All logic lives in the `relapse` package (src/relapse); each rule calls one `relapse` subcommand.

from snakemake.utils import min_version

min_version("9.0")

# The embedded default, unless the user names a config: a --configfile replaces it entirely
# (Snakemake would otherwise merge the two, and a user's benchmarks would run beside ours).
if not workflow.overwrite_configfiles:
    # Read it with relapse's loader first: a YAML error then names the file and line (Snakemake's
    # own reader says only "not valid JSON or YAML").
    from snakemake.exceptions import WorkflowError

    from relapse.config import ConfigError, load_yaml

    try:
        load_yaml(os.path.join(workflow.basedir, "config", "config.yaml"))
    except ConfigError as err:
        raise WorkflowError(str(err)) from None

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/lora_setting.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
        PRESELECTION_METRICS,
        ATTACK_TARGETS,
        attack_represent_files,
        RANKING_TARGETS,
        LLMERASER_TABLES,
    default_target: True
