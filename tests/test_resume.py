"""Nothing lost, nothing silently wrong, end to end on the tiniest config that runs every model
stage (data, tokenizer, references, unlearn, quantize, evaluate, report):

- a job killed with SIGKILL mid-run is redone by the next run (relapse.unlock, then Snakemake
  with rerun-incomplete: what `make run` does), and the tables equal an uninterrupted run's;
- Snakemake itself killed (SIGKILL to its process group): the rerun does only what is missing,
  and leaves what was finished untouched;
- determinism: two cold runs, with --cores 2 and --cores 1, give identical values;
- quantization.temp_models: true deletes the quantized model folders after evaluation and
  changes no value (the killed-Snakemake run keeps them: temp_models false).

The cold run is shared (module fixture); the killed-Snakemake run starts from its data,
reference and unlearned models, so that only quantize, evaluate and report run again.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from progress_watch import run_watched, snakemake_progress
from relapse.unlock import incomplete_outputs, unlock_if_stale

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
             "--workflow-profile", str(ROOT / "workflow" / "profiles" / "default")]
# The jobs run `relapse` from the venv, whatever PATH the test runner has.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
# Every stage's subcommand, in the order the tiny run meets them.
STAGES = ("prepare-data", "train-tokenizer", "train-reference", "unlearn", "quantize",
          "evaluate", "report")
KEYS = ["bench", "method", "hp", "seed", "quant", "metric", "split", "stat"]
CELLS = ("target/default", "retrain/default", "ga_gdr/alpha=1_epochs=1_lr=0.001_params=full")


def tiny_config(path: Path, temp_models: bool) -> Path:
    """One bench, a 2-layer width-32 model trained 2 epochs, one method, one quant: 14 jobs.
    Perplexity (utility) makes every value depend on every weight; KnowMem adds generation."""
    cfg = {
        "device": "cpu", "seeds": [0],
        "benchmarks": {"tiny": {
            "corpus": {"kind": "synthetic", "people": 12, "forget": 0.25, "holdout": 0.25,
                       "seed": 0},
            "reference": {"kind": "train",
                          "arch": {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64},
                          "tokenizer": {"vocab_size": 400}, "lr": 3.0e-3, "batch_size": 16,
                          "max_epochs": 2}}},
        "unlearning": {"batch_size": 4},
        "methods": {"ga_gdr": {"params": "full", "lr": 1.0e-3, "epochs": 1, "alpha": 1}},
        "quantization": {"schemes": [{"scheme": "rtn", "bits": [4], "group_size": 32}],
                         "diagnostics": {"enabled": False}, "temp_models": temp_models},
        "evaluation": {"metrics": ["knowmem", "utility"],
                       "knowmem": {"shots": 1, "max_new_tokens": 8, "max_items": 3},
                       "utility": {"max_items": 4}, "bootstrap": {"samples": 20}},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, config: Path, *args: str, cores: int = 2, check: bool = True,
              watch=None, started=None):
    """A run bounded by progress; `watch(proc, text)` is called at every poll (to kill it)."""
    base = snakemake_progress(workdir)
    holder = {}

    def progress(text):
        if watch is not None and "proc" in holder:
            watch(holder["proc"], text)
        return base(text)

    def on_start(proc):
        holder["proc"] = proc
        if started:
            started(proc)

    proc = run_watched([*SNAKEMAKE, "-d", str(workdir), "--cores", str(cores),
                        "--configfile", str(config), *args],
                       stall_s=600, progress=progress, started=on_start, poll_s=0.2, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def job_processes(workdir: Path) -> list[tuple[int, str]]:
    """(pid, stage) of the `relapse STAGE` processes working in `workdir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(os.readlink(entry / "cwd")).resolve() != workdir.resolve():
                continue
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for i, arg in enumerate(argv[:3]):
            if Path(arg).name == "relapse" and i + 1 < len(argv) and argv[i + 1] in STAGES:
                found.append((int(entry.name), argv[i + 1]))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system, /proc/PID/stat): "the job has run a moment"
    in work done, which a loaded machine stretches in wall-clock time but not in CPU time (0 once
    the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # after the command's ')': state is field 3, utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table_values(workdir: Path) -> pd.DataFrame:
    """Every value column of the run's table (timings excluded), sorted by the row keys."""
    table = pd.read_parquet(workdir / "results" / "tables" / "metrics.parquet")
    table = table.drop(columns=[c for c in table.columns if c == "seconds" or "time" in c])
    return table.sort_values(KEYS).reset_index(drop=True)


def files(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for p in (workdir / "results").rglob("*") if p.is_file() and ".tmp-" not in str(p)}


def planned(proc) -> dict[str, int]:
    from test_workflow import planned_jobs

    return planned_jobs(proc)


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """An uninterrupted cold run, --cores 2, temp_models: true."""
    workdir = tmp_path_factory.mktemp("cold")
    snakemake(workdir, tiny_config(workdir / "tiny.yaml", temp_models=True))
    return workdir


def test_the_tiny_run_is_meaningful(cold_run):
    """The comparisons below would pass on an empty or constant table: they would not here."""
    values = table_values(cold_run)
    assert set(values.method) == {"target", "retrain", "ga_gdr"} and len(values) >= 20
    ppl = values[values.stat == "perplexity"]
    assert len(ppl) >= 6 and ppl.value.nunique() == len(ppl), ppl


def test_temp_models_are_deleted_after_evaluation(cold_run):
    for cell in CELLS:
        run = cold_run / "results" / "tiny" / cell / "s0" / "rtn-w4"
        assert (run / "metrics.parquet").is_file()
        assert not (run / "model").exists(), f"{run}/model was kept with temp_models: true"
    assert (cold_run / "results" / "tiny" / "reference" / "target" / "model.safetensors").exists()
    assert list((cold_run / "results" / "tiny" / "ga_gdr").glob("*/s0/unlearned"))


def test_a_killed_job_of_each_stage_is_redone_and_the_results_equal_an_uninterrupted_run(
        cold_run, tmp_path):
    """Cold, --cores 1: SIGKILL the first job of a stage (data, tokenizer, reference, unlearn,
    quantize, evaluate, report) once it has used 0.2 s of CPU (work done, not wall-clock
    time); the run fails; unlock + rerun (rerun-incomplete, as `make run`) goes on, and its
    first job of the next stage is killed in turn. The last rerun finishes: the same values as the uninterrupted --cores 2 run (two cold
    runs, two core counts, one of them resumed seven times)."""
    config = tiny_config(tmp_path / "tiny.yaml", temp_models=True)
    killed = []
    for stage in STAGES:
        def watch(proc, text, stage=stage):
            if len(killed) and killed[-1] == stage:
                return
            for pid, name in job_processes(tmp_path):
                if name == stage and cpu_seconds(pid) > 0.2:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(stage)
                    return

        run = snakemake(tmp_path, config, cores=1, check=False, watch=watch)
        assert killed and killed[-1] == stage, f"no {stage} job was seen running"
        assert run.returncode != 0
        assert not (tmp_path / "results" / "tables" / "metrics.parquet").exists()
        assert unlock_if_stale(tmp_path, echo=print)
    snakemake(tmp_path, config, cores=1)
    pd.testing.assert_frame_equal(table_values(tmp_path), table_values(cold_run),
                                  check_exact=True)
    # the killed jobs' temporary outputs went when they were redone
    assert not [p for p in (tmp_path / "results").rglob("*") if ".tmp-" in p.name]


def test_a_killed_snakemake_resumes_only_what_is_missing(cold_run, tmp_path):
    """Start from the cold run's data, references and unlearned model (temp_models: false);
    SIGKILL Snakemake's whole process group once a cell is evaluated and a job is running. The
    rerun plans only the missing jobs, leaves every finished file untouched, and gives the cold
    run's values."""
    for part in ("data", "reference", "ga_gdr"):
        shutil.copytree(cold_run / "results" / "tiny" / part, tmp_path / "results" / "tiny" / part,
                        ignore=shutil.ignore_patterns("rtn-w4"))
    shutil.copytree(cold_run / ".snakemake" / "metadata", tmp_path / ".snakemake" / "metadata")
    config = tiny_config(tmp_path / "tiny.yaml", temp_models=False)
    metrics = [tmp_path / "results" / "tiny" / c / "s0" / "rtn-w4" / "metrics.parquet"
               for c in CELLS]
    killed = []

    def registered(m):      # written, and its job's end recorded by Snakemake
        return m.exists() and str(m.relative_to(tmp_path)) not in incomplete_outputs(tmp_path)

    def watch(proc, text):
        if not killed and any(map(registered, metrics)) and job_processes(tmp_path):
            os.killpg(proc.pid, signal.SIGKILL)
            killed.append(True)

    first = snakemake(tmp_path, config, check=False, watch=watch)
    assert killed and first.returncode != 0
    assert list((tmp_path / ".snakemake" / "locks").glob("*")), "kill -9 leaves the lock"
    incomplete = incomplete_outputs(tmp_path)
    before = files(tmp_path)
    done = sum(map(registered, metrics))
    assert 1 <= done < len(CELLS)

    assert unlock_if_stale(tmp_path, echo=print)
    plan = planned(snakemake(tmp_path, config, "-n"))
    assert plan and not {"prepare_data", "train_reference", "unlearn"} & set(plan), plan
    assert plan["evaluate"] == len(CELLS) - done
    assert plan.get("quantize", 0) <= len(CELLS) - done
    snakemake(tmp_path, config)

    after = files(tmp_path)
    finished = {f for f in before if not any(f == i or f.startswith(i + "/")
                                             for i in incomplete)}
    touched = sorted(f for f in finished if f.startswith("results/tiny/") and
                     after.get(f) != before[f])
    assert not touched, f"the rerun rewrote finished outputs: {touched}"
    # temp_models: false keeps the quantized models; the values equal the temp_models run's
    for cell in CELLS:
        assert (tmp_path / "results" / "tiny" / cell / "s0" / "rtn-w4" / "model").is_dir()
    pd.testing.assert_frame_equal(table_values(tmp_path), table_values(cold_run),
                                  check_exact=True)
    print(f"{done} of {len(CELLS)} cells were evaluated before the kill; replanned {plan}")
