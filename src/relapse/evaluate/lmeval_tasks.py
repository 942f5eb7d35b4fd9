"""lm-evaluation-harness tasks as relapse reads them: which leaf tasks a configured name (a task,
a group such as `mmlu`, or a tag) stands for, which dataset (path, config) and splits each
reads, and the checks that refuse, at config validation, an unknown task or a local snapshot that
lacks what a task reads.

A task is pointed at a local snapshot in the hub layout (`evaluation.lm_eval.snapshots`: task ->
folder) by overriding its `dataset_path`; lm-eval then calls `datasets.load_dataset(folder,
dataset_name, ...)`, which reads the snapshot's README `configs:` metadata offline, as relapse
reads MUSE and TOFU snapshots (relapse.data.corpora.hub). The task (or group, whose overrides
lm-eval passes down to every subtask) is built by lm-eval's own task factory with that override
and handed to simple_evaluate as an object: an inline config dict would not do, since lm-eval
0.4.13 takes a dict naming a registered group as a new group and passes its `task:` list down as
every subtask's name. Nothing of lm-eval is patched.

lm-eval's task index (TaskManager) takes a few seconds to build: it is built once per process.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

# Columns lm-eval's mmlu and wmdp templates read (doc_to_text, doc_to_target), by dataset id:
# a snapshot whose split lacks one is refused at validation. Other datasets: not checked.
COLUMNS = {"cais/mmlu": ("question", "subject", "choices", "answer"),
           "cais/wmdp": ("question", "choices", "answer")}


class TaskError(ValueError):
    """A task lm-eval does not know, or a local snapshot that lacks what a task reads."""


@lru_cache(maxsize=1)
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


def version() -> str:
    import lm_eval

    return getattr(lm_eval, "__version__", "unknown")


def _config(entry) -> dict:
    """An index entry's full config (its `include:` resolved), without building the task (which
    would load its dataset)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if entry.yaml_path:
        return load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
    return dict(entry.cfg or {})


def leaves(name: str) -> list[tuple[str, dict]]:
    """(leaf task name, its config) of every task that `name` runs: itself for a task, its
    members (recursively) for a group or tag."""
    from lm_eval.tasks._index import Kind

    index = task_manager().task_index
    if name not in index:
        close = difflib.get_close_matches(name, index, n=5, cutoff=0.6)
        raise TaskError(f"evaluation.lm_eval.tasks: {name!r} is not a task, group or tag that "
                        f"lm-eval {version()} knows"
                        + (f"; close names: {', '.join(close)}" if close else ""))
    entry = index[name]
    if entry.kind == Kind.TAG:
        return [leaf for member in sorted(entry.tags) for leaf in leaves(member)]
    if entry.kind == Kind.GROUP:
        out = []
        for member in _config(entry).get("task", []):
            member = member if isinstance(member, str) else member.get("task") or member.get(
                "group")
            out += leaves(member)
        return out
    return [(name, _config(entry))]


def splits_read(cfg: dict, num_fewshot: int | None) -> list[str]:
    """The splits a leaf task reads: the one it scores (test, else validation) and the one its
    few-shot examples come from: a declared `fewshot_split` is read when the task is built, even
    at 0 shots (mmlu's `dev`: a snapshot without it fails in lm-eval with KeyError 'dev'); the
    training or validation split only with few-shot examples."""
    scored = cfg.get("test_split") or cfg.get("validation_split")
    out = [scored] if scored else []
    shots = cfg.get("num_fewshot", 0) if num_fewshot is None else num_fewshot
    fewshot = cfg.get("fewshot_split")
    if not fewshot and shots:
        fewshot = cfg.get("training_split") or cfg.get("validation_split")
    if fewshot and fewshot not in out:
        out.append(fewshot)
    return out


def check(lcfg: dict) -> None:
    """Every task known to lm-eval; every snapshot a folder holding, for each leaf task, its
    dataset config, the splits it reads and (mmlu, wmdp) the columns its prompt reads."""
    from relapse.data.corpora.hub import CorpusError, LocalSnapshot

    tasks, snapshots = list(lcfg.get("tasks", [])), dict(lcfg.get("snapshots") or {})
    stray = sorted(set(snapshots) - set(tasks))
    if stray:
        raise TaskError(f"evaluation.lm_eval.snapshots: {', '.join(map(repr, stray))} not in "
                        f"evaluation.lm_eval.tasks ({', '.join(tasks)}); allowed: a snapshot per "
                        "listed task")
    for task in tasks:
        found = leaves(task)
        if task not in snapshots:
            continue
        path = Path(snapshots[task]).expanduser()
        where = f"evaluation.lm_eval.snapshots.{task}: {snapshots[task]!r}"
        if not path.is_dir():
            raise TaskError(f"{where} is not a folder (from {Path.cwd()}); allowed: a local "
                            "snapshot of the task's dataset in the hub layout (README.md "
                            "`configs:` metadata and its data files)")
        try:
            snapshot = LocalSnapshot(str(path))
            configs = snapshot.configs()
        except CorpusError as err:
            raise TaskError(f"{where}: {err}") from None
        for leaf, cfg in found:
            name = cfg.get("dataset_name") or "default"
            if name not in configs:
                raise TaskError(f"{where}: task {leaf} reads config {name!r} of "
                                f"{cfg.get('dataset_path')}, which the snapshot lacks; configs "
                                f"there: {', '.join(configs) or 'none'}")
            for split in splits_read(cfg, lcfg.get("num_fewshot")):
                try:
                    snapshot.check_split(name, split, COLUMNS.get(cfg.get("dataset_path"), ()))
                except CorpusError as err:
                    raise TaskError(f"{where}: task {leaf}: {err}") from None


def task_specs(lcfg: dict) -> list:
    """What simple_evaluate is given: a task's name, or the task (group, tag's tasks) built with
    its `dataset_path` pointed at its snapshot."""
    snapshots = lcfg.get("snapshots") or {}
    manager = task_manager()
    out = []
    for task in lcfg["tasks"]:
        if task not in snapshots:
            out.append(task)
            continue
        built = manager._factory.build(
            manager.task_index[task], registry=manager.task_index,
            overrides={"dataset_path": str(Path(snapshots[task]).expanduser())})
        out += built if isinstance(built, list) else [built]
    return out
