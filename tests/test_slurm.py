"""The SLURM profile (workflow/profiles/slurm).

Dry runs (fast, no cluster): the profile plans the same jobs as a local run, model rules carry
gpu=1 exactly when the config's device is cuda, partitions and attempt-scaled memory come from the
profile, and quantize + evaluate of each cell form one group job.

Real cluster (marker `slurm`; root only): tests/slurm/cluster.sh installs Debian's slurm-wlm and
munge, starts a one-node cluster with two fake GPUs, and a tiny config runs through every rule
under SLURM with the profile. Then: every job went through sbatch and completed, model jobs got
--gpus=1 and saw a SLURM-set CUDA_VISIBLE_DEVICES, the others got no GPU, each cell's quantize +
evaluate ran as one SLURM job, and metrics.parquet equals a local run's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from progress_watch import run_watched, snakemake_progress, stop
from test_workflow import planned_jobs, snakemake

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]

GPU_RULES = {"train_reference", "snap_reference", "unlearn", "quantize", "evaluate", "diagnose"}
CPU_RULES = {"prepare_data", "train_tokenizer", "select_epoch", "check_cells", "report"}
# The default config's attack slice (config `attacks:`); tests/data/small.yaml has none.
ATTACK_GPU_RULES = {"attack", "evaluate_attack", "represent"}
ATTACK_CPU_RULES = {"attack_tables", "durability", "ranking"}
KEYS = ["bench", "method", "hp", "seed", "quant", "metric", "split", "stat"]
# The real-cluster run is bounded by progress, not by a wall clock: it is stopped only after
# this long without a SLURM job state change, a Snakemake job starting or finishing, or a job
# log growing (a loaded CI machine makes a run slow, not stuck).
STALL_S = 300


# --- dry runs -----------------------------------------------------------------------------------

def parse_plan(text: str) -> tuple[list[dict], list[dict]]:
    """Jobs (rule, wildcards, resources, group) and group jobs (id, member jobs) of a dry run."""
    jobs, groups, job, group = [], [], None, None
    for line in text.splitlines():
        header = re.search(r"Group job (\S+) \(jobs in lexicogr\. order\):", line)
        if header:
            group = {"id": header.group(1), "jobs": []}
            groups.append(group)
            continue
        rule = re.match(r"^(\s*)(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if rule:
            if not rule.group(1):           # a job at top level ends the current group
                group = None
            job = {"rule": rule.group(2), "wildcards": "", "resources": {},
                   "group": group["id"] if group else None}
            jobs.append(job)
            if group:
                group["jobs"].append(job)
            continue
        field = re.match(r"^\s+(wildcards|resources): (.*)$", line)
        if field and job is not None:
            if field.group(1) == "wildcards":
                job["wildcards"] = field.group(2)
            else:
                job["resources"] = dict(item.split("=", 1) for item in field.group(2).split(", "))
    return jobs, groups


def slurm_dry_run(workdir: Path, *args: str) -> str:
    proc = snakemake(workdir, "-n", "--workflow-profile", str(PROFILE), *args)
    return proc.stdout + proc.stderr


def cuda_config(tmp_path: Path) -> Path:
    """config/config.yaml with device: cuda (a GPU cluster run)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["device"] = "cuda"
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_slurm_profile_plans_the_same_jobs_as_a_local_run(tmp_path):
    from relapse import grid
    from relapse.config import validate

    local = planned_jobs(snakemake(tmp_path, "-n"))
    text = slurm_dry_run(tmp_path)
    assert planned_jobs(subprocess.CompletedProcess([], 0, text, "")) == local
    cells = grid.cells(validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())))
    assert local["quantize"] == local["evaluate"] == len(cells)
    # the embedded default runs on the CPU: no job asks for a GPU
    jobs, _ = parse_plan(text)
    assert {j["resources"].get("gpu") for j in jobs if j["rule"] != "all"} == {"0"}


def test_cuda_config_gives_model_rules_one_gpu_and_the_others_none(tmp_path):
    text = slurm_dry_run(tmp_path, "--configfile", str(cuda_config(tmp_path)))
    jobs, _ = parse_plan(text)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]
    rules = Counter(j["rule"] for j in jobs)
    gpu_rules, cpu_rules = GPU_RULES | ATTACK_GPU_RULES, CPU_RULES | ATTACK_CPU_RULES
    assert set(rules) == gpu_rules | cpu_rules | {"all"}
    for job in jobs:
        if job["rule"] == "all":
            continue
        res = job["resources"]
        assert res["gpu"] == ("1" if job["rule"] in gpu_rules else "0"), job
        assert res["slurm_partition"] == profile[job["rule"]]["slurm_partition"], job
        assert int(res["mem_mb"]) == eval(profile[job["rule"]]["mem_mb"], {"attempt": 1}), job
        assert int(res["runtime"]) == profile[job["rule"]]["runtime"], job
    # GPU flags never go through slurm_extra (the plugin rejects them there)
    assert not any("slurm_extra" in j["resources"] for j in jobs)


def test_memory_grows_with_the_retry_attempt(tmp_path):
    text = slurm_dry_run(tmp_path, "--attempt", "2", "--configfile", str(cuda_config(tmp_path)))
    jobs, _ = parse_plan(text)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]
    for job in (j for j in jobs if j["rule"] != "all"):
        assert int(job["resources"]["mem_mb"]) == 2 * eval(profile[job["rule"]]["mem_mb"],
                                                           {"attempt": 1}), job


def test_quantize_and_evaluate_of_one_cell_form_one_group(tmp_path):
    jobs, groups = parse_plan(slurm_dry_run(tmp_path))
    n_cells = sum(j["rule"] == "evaluate" for j in jobs)
    assert n_cells > 0 and len(groups) == n_cells
    for group in groups:
        members = sorted((j["rule"], j["wildcards"]) for j in group["jobs"])
        assert [rule for rule, _ in members] == ["evaluate", "quantize"], group["id"]
        assert members[0][1] == members[1][1], group["id"]   # the same cell
    assert all(j["group"] is None for j in jobs if j["rule"] not in ("quantize", "evaluate"))


# --- a real cluster -----------------------------------------------------------------------------

def tiny_config(path: Path) -> Path:
    """tests/data/small.yaml cut down to the fewest, shortest jobs that still use every rule: both
    arms (train and snap), one method, one quant (so 6 quantize + evaluate cells), few epochs and
    items. device: auto, so that a job runs on whatever the node has."""
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "small.yaml").read_text())
    cfg["device"] = "auto"
    for bench in cfg["benchmarks"].values():
        if "max_epochs" in bench.get("reference", {}):
            bench["reference"]["max_epochs"] = 1
    cfg["methods"] = {"ga_gdr": {"params": "full", "lr": 1.0e-3, "epochs": 1, "alpha": 1}}
    cfg["quantization"]["schemes"] = [{"scheme": "rtn", "bits": [4], "group_size": 64}]
    cfg["quantization"]["temp_models"] = True   # the quantized model lives only inside its group
    evaluation = cfg["evaluation"]
    for metric in ("knowmem", "verbmem"):
        evaluation[metric] = {**evaluation.get(metric, {}), "max_new_tokens": 16, "max_items": 4}
    evaluation["bootstrap"] = {"samples": 20}
    # one quant and no full-precision cell: PrivLeak against the retrain at the same quant
    evaluation["privleak"] = {**evaluation.get("privleak", {}), "reference": "matched"}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} {cmd[1]} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scontrol_jobs(env) -> dict[str, dict[str, str]]:
    out = run(["scontrol", "show", "job", "--oneliner"], env=env).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def slurm_progress(env, workdir: Path, slurm_logs: Path):
    """Progress of a SLURM run: the state of every SLURM job, Snakemake's job events and the
    size of every job log (Snakemake's and SLURM's). Status-check chatter is not progress."""
    events = snakemake_progress(workdir)
    last_states = [None]

    def progress(text: str):
        try:
            jobs = scontrol_jobs(env)
            last_states[0] = tuple(sorted((i, j.get("JobState")) for i, j in jobs.items()))
        except (AssertionError, OSError, subprocess.SubprocessError):
            pass                        # scontrol failed this once: no news, not progress
        logs = tuple(sorted((str(p), p.stat().st_size) for p in slurm_logs.rglob("*")
                            if p.is_file())) if slurm_logs.is_dir() else ()
        return events(text), last_states[0], logs

    return progress


def read_metrics(workdir: Path) -> pd.Series:
    table = pd.read_parquet(workdir / "results" / "tables" / "metrics.parquet")
    table = table.assign(seed=table.seed.astype(int))
    assert not table.duplicated(KEYS).any()
    return table.set_index(KEYS)["value"].sort_index()


@pytest.mark.slow
@pytest.mark.slurm
def test_workflow_runs_on_a_real_slurm_cluster(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: installs slurm-wlm and munge with apt-get and starts "
                    "munged, slurmctld and slurmd")
    daemons = ("slurmctld", "slurmd", "sbatch", "munged")
    if not shutil.which("apt-get") and not all(shutil.which(d) for d in daemons):
        pytest.skip("apt-get is not available to install slurm-wlm and munge")

    t0 = time.monotonic()
    config = tiny_config(tmp_path / "tiny.yaml")
    # The reference: the same config run locally, while the cluster is installed and the SLURM
    # run waits on status checks. No GPU visible here: device auto resolves to cpu.
    local_dir = tmp_path / "local"
    local_proc = []
    local = ThreadPoolExecutor(1).submit(
        run_watched,
        [*SNAKEMAKE, "-d", local_dir, "--workflow-profile", ROOT / "workflow/profiles/default",
         "--cores", "2", "--configfile", config],
        stall_s=STALL_S, progress=snakemake_progress(local_dir), started=local_proc.append,
        env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    state = tmp_path / "cluster"
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    try:
        # apt-get: bounded by its output (a slow mirror is not a stuck one)
        install = run_watched(["bash", CLUSTER, "install"], stall_s=STALL_S)
        assert install.returncode == 0, f"install failed:\n{install.stdout[-3000:]}\n" \
                                        f"{install.stderr[-3000:]}"
        run(["bash", CLUSTER, "start", state], timeout=180)
        t_ready = time.monotonic()
        plan = planned_jobs(snakemake(tmp_path / "plan", "-n", "--configfile", str(config)))
        assert set(plan) == GPU_RULES | CPU_RULES | {"all", "total"}

        # On the submit host a GPU is "visible" (any CUDA_VISIBLE_DEVICES): device auto makes
        # the model rules ask for gpu=1. The value is one SLURM never sets, so a job that shows
        # 0 or 1 got it from SLURM's GPU allocation. The node has no CUDA: torch falls back to
        # the CPU inside the jobs.
        slurm_dir = tmp_path / "slurm"
        t_submit = time.monotonic()
        proc = run_watched(
            [*SNAKEMAKE, "-d", slurm_dir, "--workflow-profile", PROFILE, "--configfile", config,
             # test overrides: no slurmdbd here, a fast private cluster, fail fast, keep logs
             "--slurm-status-command", "squeue",
             "--slurm-init-seconds-before-status-checks", "1",
             "--seconds-between-status-checks", "1",
             "--slurm-keep-successful-logs", "--slurm-logdir", tmp_path / "slurm-logs",
             "--retries", "0", "--verbose"],
            stall_s=STALL_S, poll_s=5,
            progress=slurm_progress(env, slurm_dir, tmp_path / "slurm-logs"),
            env={**env, "CUDA_VISIBLE_DEVICES": "from-submit-host"})
        t_slurm = time.monotonic() - t_submit
        log = proc.stdout + proc.stderr
        (tmp_path / "slurm-run.log").write_text(log)
        assert proc.returncode == 0, f"SLURM run failed ({proc.returncode}):\n{log[-6000:]}"
        local_run = local.result()      # bounded by its own progress
        assert local_run.returncode == 0, f"local run failed:\n{local_run.stderr[-4000:]}"

        # Every job went through sbatch, and SLURM ran each to completion.
        submitted = re.findall(
            r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", log)
        calls = {re.search(r"--output '?([^' ]+)", call).group(1): call
                 for call in re.findall(r"sbatch call: (sbatch .*)", log)}
        n_groups = plan["evaluate"]
        assert len(submitted) == len(calls) == plan["total"] - 1 - n_groups   # 'all' runs nowhere
        assert "localrule" not in log.replace("localrule all:", "")
        slurm = scontrol_jobs(env)
        ids = [slurm_id for _, slurm_id, _ in submitted]
        assert all(slurm[i]["JobState"] == "COMPLETED" for i in ids), {i: slurm[i] for i in ids}

        # Each sbatch call: the rule (or group) in --comment, the partition from the profile,
        # --gpus=1 exactly for model rules. What SLURM allocated and what each job step saw
        # agree: a GPU and a SLURM-set CUDA_VISIBLE_DEVICES, or neither.
        profile = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]
        seen_rules, groups = Counter(), []
        for _, slurm_id, job_log in submitted:
            call = calls[str(Path(job_log).with_name("%j.log"))]
            comment = re.search(r"--comment '?rule_([^\s']+?)(?:_wildcards_|'| )", call).group(1)
            if comment.startswith("cell_"):
                assert comment.endswith("_evaluate_quantize"), comment
                groups.append((slurm_id, Path(job_log)))
                rules = ["quantize", "evaluate"]
            else:
                rules = [comment]
            seen_rules.update(rules)
            gpu = rules[0] in GPU_RULES
            assert ("--gpus=1" in call) is gpu and "--gres" not in call, call
            assert f"-p {profile[rules[0]]['slurm_partition']} " in call, call
            assert (slurm[slurm_id].get("TresPerJob") == "gres:gpu:1") is gpu, slurm[slurm_id]
            # the batch step (x) and the srun step (0) that runs the rule
            steps = {step.suffix: dict(item.split("=", 1) for item in step.read_text().split())
                     for step in (state / "jobenv").glob(f"{slurm_id}.*")}
            assert set(steps) == {".x", ".0"}, (call, steps)
            if gpu:
                assert steps[".x"]["SLURM_JOB_GPUS"] in ("0", "1"), (call, steps)
                for seen in steps.values():
                    assert seen["CUDA_VISIBLE_DEVICES"] == steps[".x"]["SLURM_JOB_GPUS"], steps
            else:
                for seen in steps.values():
                    assert seen == {"CUDA_VISIBLE_DEVICES": "<unset>",
                                    "SLURM_JOB_GPUS": "<unset>"}, (call, steps)
        assert dict(seen_rules) == {r: n for r, n in plan.items() if r not in ("all", "total")}

        # Grouping: one SLURM job per cell ran both its quantize and its evaluate, and the
        # temp() quantized model was gone when the group ended.
        assert len(groups) == n_groups
        for slurm_id, job_log in groups:
            text = job_log.read_text()
            assert "rule quantize:" in text and "rule evaluate:" in text, text[-2000:]
        assert not list((slurm_dir / "results").glob("*/*/*/s*/*/model"))

        # The same numbers as the local run.
        pd.testing.assert_series_equal(read_metrics(slurm_dir), read_metrics(local_dir),
                                       check_exact=True)
        # device: auto with CUDA_VISIBLE_DEVICES set but no CUDA resolves to the CPU.
        check = subprocess.run(
            [sys.executable, "-c",
             "from relapse.models.io import resolve_device; print(resolve_device('auto'))"],
            capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
        assert check.stdout.strip() == "cpu", check.stderr
        print(f"\nslurm test: install+configure+start {t_ready - t0:.0f} s, SLURM run "
              f"{t_slurm:.0f} s ({len(ids)} sbatch jobs, {len(groups)} of them groups), "
              f"whole test {time.monotonic() - t0:.0f} s")
    finally:
        for started in local_proc:
            if started.poll() is None:
                stop(started, grace_s=10)
        subprocess.run(["bash", CLUSTER, "stop", state], capture_output=True, timeout=120)
