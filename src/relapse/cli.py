"""`relapse`: one subcommand per pipeline stage (the Snakemake rules call these), plus `list`
and `validate`.

A stage subcommand takes its settings as one JSON object (`--settings`): exactly the slice of
the validated config that its rule declares as params, so Snakemake reruns a job precisely when
the settings it reads change. Heavy libraries are imported inside each subcommand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _settings(args) -> dict:
    """A stage's settings: the JSON object Snakemake passes (its rule's params), or read from a
    file with @path."""
    text = args.settings
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"relapse {args.command}: --settings is not valid JSON: {err}") from None
    if not isinstance(settings, dict):
        raise SystemExit(f"relapse {args.command}: --settings must be a JSON object")
    return settings


def _device(settings: dict) -> str:
    if settings.get("device", "auto") == "cpu":
        return "cpu"      # no torch import for stages that may not need it
    from relapse.models.io import resolve_device

    return resolve_device(settings.get("device", "auto"))


def cmd_list(args) -> None:
    if args.what == "methods":
        from relapse.unlearn.registry import method_names as names
    elif args.what == "quantizers":
        from relapse.quantize.registry import quantizer_names as names
    elif args.what == "attacks":
        from relapse.attacks.registry import attack_names as names
    elif args.what == "corpora":
        from relapse.data.corpora import corpus_kinds as names
    else:
        from relapse.evaluate.registry import metric_names as names
    print("\n".join(names()))


def cmd_prepare_data(args) -> None:
    from relapse.data.relearn_split import DEFAULT_HELDOUT
    from relapse.models.world import prepare_data as prepare

    s = _settings(args)
    prepare(args.bench, s["corpus"], args.out, base_dir=args.base, threads=args.threads,
            tokenizer_dir=args.tokenizer, template=s.get("template"),
            heldout=s.get("relearn", {}).get("heldout", DEFAULT_HELDOUT))


def cmd_check_corpus(args) -> None:
    from relapse.data.corpora import get_corpus
    from relapse.data.corpora.hub import CorpusError
    from relapse.io import write_json

    corpus = _settings(args)["corpus"]
    try:
        record = get_corpus(corpus["kind"]).check_source(corpus)
    except CorpusError as err:
        raise SystemExit(f"relapse check-corpus: benchmarks.{args.bench}.corpus: {err}") from None
    write_json(args.out, {"bench": args.bench, "corpus": corpus, **record})
    print(f"[check-corpus] {record['source']}: {len(record['splits_used'])} splits found")


def cmd_train_tokenizer(args) -> None:
    from relapse.models.reference import train_tokenizer_stage

    train_tokenizer_stage(args.data, _settings(args).get("vocab_size", 2048), args.out)


def cmd_train_reference(args) -> None:
    from relapse.models.reference import train_reference

    s = _settings(args)
    train_reference(args.which, args.data, args.tokenizer, s["reference"], args.out,
                    device=_device(s), threads=args.threads)


def cmd_load_gguf(args) -> None:
    from relapse.models.gguf import load_gguf_reference

    load_gguf_reference(_settings(args)["reference"], args.out, threads=args.threads)


def cmd_fetch_pretrained(args) -> None:
    from relapse.models.pretrained import PretrainedError, fetch_reference

    try:
        fetch_reference(_settings(args)["reference"], args.which, args.out)
    except PretrainedError as err:   # e.g. a failed download: the repo id and revision
        raise SystemExit(f"relapse fetch-pretrained: reference.{args.which}: {err}") from None


def cmd_finetune_reference(args) -> None:
    from relapse.models.reference import finetune_reference

    s = _settings(args)
    finetune_reference(args.which, args.data, args.base, s["reference"], args.out,
                       device=_device(s), threads=args.threads)


def cmd_export_gguf(args) -> None:
    from relapse.quantize.export_gguf import export_gguf

    done = export_gguf(args.model, args.out, args.type, float_type=args.float_type)
    print(f"{done['file']}: {done['type']}, tensors {done['tensors']}")


def cmd_snap_reference(args) -> None:
    from relapse.quantize.snap import snap_reference

    snap_reference(args.source, _settings(args)["snap"], args.out, threads=args.threads)


def cmd_unlearn(args) -> None:
    from relapse.unlearn.trainer import unlearn

    s = _settings(args)
    unlearn(args.method, s["hp"], args.seed, args.target, args.data, s["unlearning"], args.out,
            save_epochs=s.get("save_epochs"), device=_device(s), threads=args.threads)


def cmd_prepare_lora_setting(args) -> None:
    from relapse.data.edits import prepare_lora_setting

    prepare_lora_setting(args.data, _settings(args)["lora_setting"], args.out)


def cmd_train_lora_reference(args) -> None:
    from relapse.models.lora_setting import train_lora_reference

    s = _settings(args)
    train_lora_reference(args.which, args.base, args.items, s["lora_setting"], args.out,
                         device=_device(s), threads=args.threads)


def cmd_unlearn_one_shot(args) -> None:
    """A one-shot method (relapse.unlearn.oneshot) on a LoRA-setting benchmark."""
    from relapse.unlearn.registry import get_method

    s = _settings(args)
    method = get_method(args.method)
    if not getattr(method, "one_shot", False):
        raise SystemExit(f"relapse unlearn-one-shot: {args.method!r} is not a one-shot method")
    method.run(s["hp"], args.seed, args.base, args.target, args.items, args.out,
               gold_dir=args.gold, keys={"bench": args.bench, "method": args.method,
                                         "hp": args.hp},
               device=_device(s), threads=args.threads)


def cmd_select_epoch(args) -> None:
    from relapse.unlearn.checkpoints import select_epoch

    select_epoch(args.run, int(_settings(args)["epoch"]), args.out)


def _quant_parts(quant: dict) -> tuple[str, int, dict]:
    settings = {k: v for k, v in quant.items() if k not in ("scheme", "bits", "name")}
    return quant["scheme"], int(quant["bits"]), settings


def cmd_quantize(args) -> None:
    from relapse.quantize.stage import quantize_model

    s = _settings(args)
    scheme, bits, settings = _quant_parts(s["quant"])
    quantize_model(args.source, args.out, scheme, bits, settings, device=_device(s),
                   threads=args.threads, data_dir=args.data,
                   lora_merge=s.get("lora_merge", "merged"), base_quant_dir=args.base_quant)


def cmd_diagnose(args) -> None:
    from relapse.quantize.diagnostics import survival_diagnostics

    s = _settings(args)
    if not len(args.quant) == len(args.target_quant) == len(args.unlearned_quant):
        raise SystemExit("relapse diagnose: --quant, --target-quant and --unlearned-quant need "
                         "one entry per quant, in the same order")
    keys = {"bench": args.bench, "method": args.method, "hp": args.hp, "seed": args.seed}
    cells = list(zip(args.quant, args.target_quant, args.unlearned_quant))
    survival_diagnostics(args.target, args.unlearned, cells, args.data, keys,
                         s.get("diagnostics", {}), args.out, device=_device(s),
                         threads=args.threads, dtype=s.get("dtype", "float32"))


def cmd_evaluate(args) -> None:
    from relapse.evaluate.stage import evaluate_model
    from relapse.grid import parse_hp_id

    s = _settings(args)
    scheme, bits, settings = _quant_parts(s["quant"])
    keys = {"bench": args.bench, "method": args.method, "hp": args.hp,
            "params": parse_hp_id(args.hp).get("params", "none"), "seed": args.seed,
            "quant": args.quant, "quant_scheme": scheme, "bits": bits}
    from relapse.models.io import read_manifest

    # An attacked cell (relapse.attacks) carries its attack's key columns in its folder.
    keys.update(read_manifest(args.model, "attack_manifest.json").get("keys", {}))
    evaluate_model(args.model, args.data, keys, s["evaluation"], args.metrics, args.samples,
                   device=_device(s), threads=args.threads, retrain_metrics=args.retrain_metrics,
                   full_retrain_metrics=args.full_retrain_metrics)


def cmd_attack(args) -> None:
    from relapse.attacks.stage import run_attack

    s = _settings(args)
    run_attack(args.attack, args.source, args.out, args.data, s["attack"], lora=s.get("lora"),
               seed=args.seed, device=_device(s), threads=args.threads)


def cmd_attack_tables(args) -> None:
    from relapse.attacks.tables import write_tables

    write_tables(args.attack_metrics, args.base_metrics, args.attacks_out, args.relearn_out,
                 _settings(args).get("config", {}))


def cmd_durability(args) -> None:
    from relapse.report.durability import write_durability

    s = _settings(args)
    write_durability(args.attacks, args.metrics, args.selection, args.out, args.labels,
                     s.get("label", {}), args.samples, s.get("bootstrap"))


def cmd_ranking(args) -> None:
    from relapse.report.ranking import write_ranking

    write_ranking(args.durability, args.metrics, args.out, args.figure)


def cmd_llmeraser_table(args) -> None:
    from relapse.report.llmeraser import write_llmeraser_tables

    items = dict(pair.split("=", 1) for pair in args.items)
    write_llmeraser_tables(args.unlearned, args.samples, items, args.table, args.markdown,
                           _settings(args).get("config", {}))


def cmd_represent(args) -> None:
    from relapse.attacks.represent import layer_figure, represent

    s = _settings(args)
    keys = {"bench": args.bench, "method": args.method, "hp": args.hp, "seed": args.seed,
            "quant": args.quant}
    from relapse.models.io import read_manifest

    # An attacked model folder carries its attack's key columns (as in cmd_evaluate).
    keys.update(read_manifest(args.model, "attack_manifest.json").get("keys", {}))
    frame = represent(args.model, {"target": args.target, "retrain": args.retrain}, args.data,
                      keys, s.get("represent", {}), args.out, device=_device(s),
                      threads=args.threads, dtype=s.get("dtype", "float32"))
    if args.figure:
        layer_figure(frame, args.figure)


def cmd_report(args) -> None:
    from relapse.report.build import build_report

    try:
        build_report(args.inputs, _settings(args)["config"], args.table, args.tables,
                     args.figures, diagnostics=args.diagnostics, relearn=args.relearn,
                     samples=args.samples, meta=args.meta, attacks=args.attacks,
                     attack_samples=args.attack_samples, represent=args.represent)
    except ValueError as err:     # e.g. the selection quant is not in the results
        raise SystemExit(f"relapse report: {err}") from None


def cmd_check_cells(args) -> None:
    from relapse.report.cells import CellTableError, write_cell_check

    try:
        table = write_cell_check(args.inputs, args.out)
    except CellTableError as err:
        raise SystemExit(f"relapse check-cells: {err}") from None
    print(f"[check-cells] {len(table)} cell tables, {int(table.rows.sum())} rows: ok")


def cmd_select(args) -> None:
    from relapse.report.selection import write_selection

    try:
        write_selection(args.inputs, _settings(args)["config"], args.out)
    except ValueError as err:     # the selection quant is not in the inputs
        raise SystemExit(f"relapse select: {err}") from None


def cmd_validate(args) -> None:
    from relapse.config import load_config

    cfg = load_config(args.config)
    if args.print:
        print(json.dumps(cfg, indent=2, sort_keys=True))
    else:
        print(f"{args.config}: valid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relapse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="print registered names, one per line")
    p.add_argument("what", choices=["methods", "quantizers", "metrics", "attacks",
                                           "corpora"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("validate", help="validate a config (and print it with defaults)")
    p.add_argument("config")
    p.add_argument("--print", action="store_true")
    p.set_defaults(func=cmd_validate)

    def stage(name, func, *args):
        p = sub.add_parser(name)
        p.add_argument("--settings", required=True,
                       help="the stage's settings as a JSON object (or @file.json)")
        p.add_argument("--threads", type=int, default=1)
        for arg in args:
            p.add_argument(f"--{arg}", required=True,
                           type=int if arg == "seed" else str)
        p.set_defaults(func=func)
        return p

    stage("check-corpus", cmd_check_corpus, "bench", "out")
    p = stage("prepare-data", cmd_prepare_data, "bench", "out")
    p.add_argument("--base", default=None,
                   help="a pretrained base model folder: also keep the world-knowledge QA it answers")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer folder that cuts long corpus texts into training chunks")
    stage("train-tokenizer", cmd_train_tokenizer, "bench", "data", "out")
    p = stage("train-reference", cmd_train_reference, "bench", "data", "tokenizer", "out")
    p.add_argument("--which", required=True, choices=["target", "retrain"])
    stage("snap-reference", cmd_snap_reference, "bench", "source", "out")
    stage("load-gguf", cmd_load_gguf, "bench", "out")
    p = stage("fetch-pretrained", cmd_fetch_pretrained, "bench", "out")
    p.add_argument("--which", required=True, choices=["target", "retrain"])
    p = stage("finetune-reference", cmd_finetune_reference, "bench", "data", "base", "out")
    p.add_argument("--which", required=True, choices=["target", "retrain"])
    stage("unlearn", cmd_unlearn, "bench", "method", "seed", "target", "data", "out")
    stage("select-epoch", cmd_select_epoch, "run", "out")
    stage("prepare-lora-setting", cmd_prepare_lora_setting, "bench", "data", "out")
    p = stage("train-lora-reference", cmd_train_lora_reference, "bench", "base", "items", "out")
    p.add_argument("--which", required=True, choices=["target", "retrain"])
    stage("unlearn-one-shot", cmd_unlearn_one_shot, "bench", "method", "hp", "seed", "base",
          "target", "gold", "items", "out")
    p = stage("quantize", cmd_quantize, "source", "out")
    p.add_argument("--data", default=None,
                   help="the prepared data folder (calibration for gptq/awq)")
    p.add_argument("--base-quant", default=None,
                   help="lora_merge: adapter: the quantized base (the target at the same quant)")
    p = stage("diagnose", cmd_diagnose, "bench", "method", "hp", "seed", "target", "unlearned",
              "data", "out")
    for arg in ("quant", "target-quant", "unlearned-quant"):
        p.add_argument(f"--{arg}", nargs="+", required=True)
    p = stage("evaluate", cmd_evaluate, "bench", "method", "hp", "seed", "quant", "model", "data",
              "metrics", "samples")
    p.add_argument("--retrain-metrics", default=None,
                   help="the retrain model's metrics.parquet at the same bench and quant, for "
                        "PrivLeak's matched reference (the retrain model's own needs none)")
    p.add_argument("--full-retrain-metrics", default=None,
                   help="the full-precision retrain model's metrics.parquet (same bench), for "
                        "PrivLeak's full reference (that model's own evaluation needs none)")
    p = stage("attack", cmd_attack, "attack", "seed", "source", "data", "out")
    p = stage("represent", cmd_represent, "bench", "method", "hp", "seed", "quant", "model",
              "target", "retrain", "data", "out")
    p.add_argument("--figure", default=None, help="stem of the per-layer figure (.png, .svg)")
    p = stage("attack-tables", cmd_attack_tables, "attacks-out", "relearn-out")
    p.add_argument("--attack-metrics", nargs="+", required=True,
                   help="the attacked cells' metrics.parquet files")
    p.add_argument("--base-metrics", nargs="*", default=[],
                   help="the same models' un-attacked cells' metrics.parquet (step 0)")
    p = stage("durability", cmd_durability, "attacks", "metrics", "out", "labels")
    p.add_argument("--selection", default=None, help="the report's selection.csv")
    p.add_argument("--samples", nargs="*", default=[],
                   help="samples.parquet of the attacked and un-attacked cells: the per-item "
                        "scores the verdict pairs")
    stage("ranking", cmd_ranking, "durability", "metrics", "out", "figure")
    p = stage("llmeraser-table", cmd_llmeraser_table, "table", "markdown")
    p.add_argument("--unlearned", nargs="+", required=True, help="llmeraser unlearned/ folders")
    p.add_argument("--samples", nargs="+", required=True,
                   help="samples.parquet of their cells and of the target and gold cells")
    p.add_argument("--items", nargs="+", required=True, help="BENCH=its lora_setting/ folder")
    p = stage("select", cmd_select, "out")
    p.add_argument("inputs", nargs="+", help="metrics.parquet of the target and every unlearned "
                                             "model at the selection quant")
    p = stage("report", cmd_report, "table", "tables", "figures")
    p.add_argument("--diagnostics", nargs="*", default=[],
                   help="per-cell survival diagnostics.parquet files (plotted when given)")
    p.add_argument("--relearn", default=None,
                   help="a relearning-curves table (.parquet or .csv; plotted when given)")
    p.add_argument("--samples", nargs="*", default=[],
                   help="the cells' samples.parquet files: per-item scores for the intervals "
                        "over seeds and items and for knowledge retained's")
    p.add_argument("--meta", nargs="*", default=[],
                   help="meta_eval parts to write (worst_case, worst_case_relearn, revival, "
                        "diagnostics_vs_attacks)")
    p.add_argument("--attacks", default=None, help="the attack table (attacks.parquet)")
    p.add_argument("--attack-samples", nargs="*", default=[],
                   help="samples.parquet of the attacked cells (and their references)")
    p.add_argument("--represent", nargs="*", default=[], help="repr.parquet files")
    p.add_argument("inputs", nargs="+", help="metrics.parquet files")

    p = sub.add_parser("check-cells", help="check every cell's metrics.parquet (readable, one "
                                           "cell, the cell its path names, no cell twice)")
    p.add_argument("--out", required=True, help="the list of checked cells (.csv)")
    p.add_argument("inputs", nargs="+", help="metrics.parquet files")
    p.set_defaults(func=cmd_check_cells)

    p = sub.add_parser("export-gguf", help="write a model folder of the grid as a GGUF file "
                                           "(llama.cpp, ollama)")
    p.add_argument("--model", required=True, help="a model folder, e.g. results/smollm2/npo_gdr/"
                                                  "HP/s0/unlearned or …/s0/gguf-w4/model")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", required=True,
                   choices=["q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "f16", "f32"],
                   help="type of the decoder Linear weights")
    p.add_argument("--float-type", default="f32", choices=["f32", "f16"],
                   help="type of the other 2-D tensors (embeddings) when not quantized")
    p.set_defaults(func=cmd_export_gguf)
    return parser


# The config `resources:` section that sizes each subcommand's rule (workflow/rules/common.smk).
RESOURCE_STAGE = {
    "prepare-data": "data", "check-corpus": "data", "train-tokenizer": "tokenizer", "train-reference": "reference",
    "snap-reference": "reference", "load-gguf": "reference", "fetch-pretrained": "reference",
    "finetune-reference": "reference", "train-lora-reference": "reference",
    "unlearn": "unlearn", "unlearn-one-shot": "unlearn", "select-epoch": "unlearn",
    "attack": "unlearn", "quantize": "quantize", "evaluate": "evaluate",
    "diagnose": "diagnose", "represent": "diagnose", "report": "report",
    "attack-tables": "report", "durability": "report", "ranking": "report", "llmeraser-table": "report",
    "check-cells": "report"}
OUT_OF_MEMORY = 3
NO_KERNEL = 4
# What torch and the kernel libraries say when an operation has no kernel for this device.
_NO_KERNEL = ("with arguments from the 'cpu' backend", "no kernel image is available",
              "not compiled with cuda", "requires cuda", "requires a gpu", "cuda is required",
              "only supported on cuda", "only available on cuda")


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")     # never imported here only to check
    oom = getattr(torch, "OutOfMemoryError", None) if torch else None
    return oom is not None and isinstance(err, oom)


def _is_missing_kernel(err: BaseException) -> bool:
    return isinstance(err, (NotImplementedError, RuntimeError)) and \
        any(text in str(err).lower() for text in _NO_KERNEL)


def _cgroup_memory_mb(path: str = "/sys/fs/cgroup/memory.max") -> int | None:
    """The memory limit the job really ran under (SLURM and containers set it), if any."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) // 2**20 if text.isdigit() else None


def _job(args) -> str:
    """The job in words: subcommand, Snakemake rule, its wildcards and resources."""
    parts = [f"{name} {getattr(args, name)}" for name in
             ("bench", "method", "hp", "seed", "quant", "attack", "which")
             if getattr(args, name, None) is not None]
    try:
        settings = _settings(args) if getattr(args, "settings", None) else {}
    except (SystemExit, OSError):
        settings = {}
    resources = settings.get("resources", {}) if isinstance(settings.get("resources"), dict) \
        else {}
    mem_mb = settings.get("mem_mb", resources.get("mem_mb"))
    limit = _cgroup_memory_mb()
    had = [f"threads {getattr(args, 'threads', '?')}",
           f"mem_mb {mem_mb}" if mem_mb is not None else "mem_mb not given to the job",
           *([f"a memory limit of {limit} MB (cgroup)"] if limit else []),
           f"device {settings.get('device', 'auto')}"]
    try:
        import resource

        had.append(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    except (ImportError, OSError):
        pass
    rule = args.command.replace("-", "_")
    where = f" ({', '.join(parts)})" if parts else ""
    return f"relapse {args.command} (rule {rule}){where} had {', '.join(had)}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from relapse.config import ConfigError

    try:
        args.func(args)
    except ConfigError as err:
        print(f"relapse: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError, NotImplementedError) as err:
        stage = RESOURCE_STAGE.get(args.command, args.command)
        if _is_out_of_memory(err):
            print(f"relapse: out of memory: {_job(args)}. Give the stage more memory "
                  f"(config resources.{stage}.mem_mb, or a larger GPU), or a smaller batch "
                  f"size. The error was: {type(err).__name__}: {err}", file=sys.stderr)
            return OUT_OF_MEMORY
        if _is_missing_kernel(err):
            print(f"relapse: no kernel for this device: {_job(args)}. The scheme or model "
                  "needs a GPU kernel this machine lacks: run it with device: cuda on a GPU "
                  f"node, or choose a scheme that runs here. The error was: "
                  f"{type(err).__name__}: {err}", file=sys.stderr)
            return NO_KERNEL
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
