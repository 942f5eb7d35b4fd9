"""The SLURM profile covers every rule of the workflow, on the partition its work needs.

A rule missing from the profile's set-resources falls back to default-resources: the CPU
partition, where a GPU request either fails or waits forever. So every rule (parsed from
workflow/rules/*.smk) must have an entry, and a dry run with `device: cuda` on a config that
plans every rule must put each job that asks for a GPU on the GPU partition and every other job
on the CPU partition, with no GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from test_slurm import PROFILE, parse_plan, slurm_dry_run

ROOT = Path(__file__).resolve().parents[1]
GPU_PARTITION = "gpu"
# Rules whose `relapse` subcommand never places a model on a device (cli.py passes it no
# device); every other rule runs a model and asks for a GPU when the config's device is cuda.
CPU_ONLY = {"prepare_data", "prepare_data_pretrained", "prepare_corpus", "fetch_pretrained",
            "prepare_lora_setting", "train_tokenizer", "load_gguf", "select_epoch", "check_corpus", "check_cells",
            "report", "attack_tables", "durability", "ranking", "llmeraser_table", "select_hps"}


def workflow_rules() -> set[str]:
    """Every rule that runs a job (the target rule `all` runs nothing)."""
    names = set()
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        names |= set(re.findall(r"^(?:rule|checkpoint) (\w+):", path.read_text(), flags=re.M))
    return names - {"all"}


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def test_every_rule_has_a_profile_entry_with_a_partition():
    rules = workflow_rules()
    entries = profile()["set-resources"]
    assert {"train_reference", "finetune_reference", "load_gguf"} <= rules   # parsing works
    assert sorted(rules - set(entries)) == [], "rules without a set-resources entry"
    assert sorted(set(entries) - rules) == [], "entries for rules that do not exist"
    for rule, entry in entries.items():
        assert "slurm_partition" in entry, rule
        if rule in CPU_ONLY:
            assert entry["slurm_partition"] != GPU_PARTITION, rule
            assert not {"gpu", "gpus", "gres", "gpu_model", "cpus_per_gpu"} & set(entry), rule


def every_rule_configs(tmp_path: Path) -> list[Path]:
    """Configs on cuda that together plan every rule with few jobs: the default (a trained and
    a snapped bench, and its attack slice) plus the SmolLM2 GGUF bench of config/smollm2.yaml;
    the LoRA setting with llmeraser (config/llmeraser.yaml, which takes no other method); and
    MUSE News on its pretrained references (config/muse.yaml, nothing on disk)."""
    def load(name):
        return yaml.safe_load((ROOT / "config" / name).read_text())

    default = load("config.yaml")
    # one of the attack slice's hp points (config `attacks.hps`), so that attacks are planned
    # too, and represent on the attacked folders (represent_attack)
    default["methods"] = {"npo_gdr": {"params": "full", "lr": 3e-4, "epochs": 20, "alpha": 5,
                                      "beta": 0.1}}
    default["attacks"]["represent"]["attacked"] = True
    default["quantization"]["schemes"] = [{"scheme": "none", "bits": [16]},
                                          {"scheme": "rtn", "bits": [4], "group_size": 64}]
    default["benchmarks"]["smollm2"] = load("smollm2.yaml")["benchmarks"]["smollm2"]

    lora = load("llmeraser.yaml")
    lora["benchmarks"] = dict(list(lora["benchmarks"].items())[:1])
    lora["methods"] = {"llmeraser": {"params": "lora", "solver": "cg",
                                     "iterations": 20, "tol": 1e-4}}
    lora["quantization"]["schemes"] = [{"scheme": "none", "bits": [16]}]

    muse = load("muse.yaml")
    muse["benchmarks"] = {"news": muse["benchmarks"]["news"]}
    muse["methods"] = {"ga": {"lr": 1e-5, "epochs": [1]}}
    muse["quantization"]["schemes"] = [{"scheme": "none", "bits": [16]}]
    muse["quantization"]["models"] = "selected"     # the select_hps checkpoint

    paths = []
    for name, cfg in (("default", default), ("lora", lora), ("muse", muse)):
        cfg["device"] = "cuda"
        paths.append(tmp_path / f"every_rule_{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg))
    return paths


def test_gpu_jobs_run_on_the_gpu_partition_and_cpu_jobs_get_no_gpu(tmp_path):
    jobs = []
    for i, config in enumerate(every_rule_configs(tmp_path)):
        planned, _ = parse_plan(slurm_dry_run(tmp_path / str(i), "--configfile", str(config)))
        jobs += [j for j in planned if j["rule"] != "all"]
    assert {j["rule"] for j in jobs} == workflow_rules(), "the configs must plan every rule"
    cpu_partition = profile()["default-resources"]["slurm_partition"]
    assert cpu_partition != GPU_PARTITION
    for job in jobs:
        gpu, partition = int(job["resources"]["gpu"]), job["resources"]["slurm_partition"]
        if job["rule"] in CPU_ONLY:
            assert gpu == 0, job
        else:
            assert gpu == 1, job          # a model-running rule asks for its GPU
        assert partition == (GPU_PARTITION if gpu else cpu_partition), job
