"""Every file the package and the benchmark scripts write goes through relapse.io (temp + rename):
a job killed half-way never leaves a partial file that looks complete.

The check reads the source: a call that writes a file (open for writing, to_parquet, json.dump,
write_text, ...) must write into a path bound by `with atomic_file(...) as tmp` or
`with atomic_dir(...) as tmp` in the same function, or live in relapse/io.py itself.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IO = ROOT / "src" / "relapse" / "io.py"
SOURCES = sorted(p for p in [*(ROOT / "src" / "relapse").rglob("*.py"),
                             *(ROOT / "benchmarks").glob("*.py")] if p != IO)
# Methods and functions that write their first argument (or, for Path methods, their receiver).
WRITE_METHODS = {"to_parquet", "to_csv", "to_json", "savefig", "write_table"}
PATH_METHODS = {"write_text", "write_bytes"}
WRITE_FUNCTIONS = {("json", "dump"), ("torch", "save"), (None, "save_file")}
# Functions that write to a path their caller gives, always a temp path inside an atomic_dir.
CALLER_IS_ATOMIC = {
    ("src/relapse/models/codes.py", "save_codes_folder"):
        "the quantize stage passes its atomic_dir's tmp folder",
    # Not an output: a log appended to as the run goes, where a partial log is what a killed
    # run should leave behind.
    ("src/relapse/runlog.py", "run"): "make run's log, appended line by line",
}


def _atomic_names(func) -> set[str]:
    names = set()
    for node in ast.walk(func):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                call = item.context_expr
                name = getattr(getattr(call, "func", None), "attr", None) or \
                    getattr(getattr(call, "func", None), "id", None)
                if name in ("atomic_file", "atomic_dir") and isinstance(item.optional_vars,
                                                                         ast.Name):
                    names.add(item.optional_vars.id)
    return names


def _writes(call: ast.Call) -> ast.AST | None:
    """The path expression `call` writes to, or None when it writes no file."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "open":
        mode = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
            return call.args[0]
        return None
    if isinstance(func, ast.Attribute):
        owner = getattr(func.value, "id", None)
        if func.attr in PATH_METHODS:
            return func.value
        if func.attr in WRITE_METHODS and call.args:
            return call.args[0]
        if (owner, func.attr) in WRITE_FUNCTIONS and len(call.args) > 1:
            return call.args[1]
    if isinstance(func, ast.Name) and (None, func.id) in WRITE_FUNCTIONS and len(call.args) > 1:
        return call.args[1]
    return None


def unsafe_writes(path: Path, text: str | None = None) -> list[str]:
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text() if text is None else text, rel)
    found = []
    for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                                ast.AsyncFunctionDef))):
        if (rel, func.name) in CALLER_IS_ATOMIC:
            continue
        atomic = _atomic_names(func)
        for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
            target = _writes(call)
            if target is None:
                continue
            used = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            if not used & atomic:
                found.append(f"{rel}:{call.lineno} {ast.unparse(call)[:80]}")
    return sorted(set(found))


def test_every_file_is_written_through_relapse_io():
    offenders = [line for path in SOURCES for line in unsafe_writes(path)]
    assert not offenders, "bare writes (use relapse.io.write_json / write_parquet / " \
                          "atomic_file / atomic_dir):\n" + "\n".join(offenders)


@pytest.mark.parametrize("code", [
    'def f(p):\n    open(p, "w").write("x")',
    'def f(p, d):\n    d.to_parquet(p)',
    'def f(p, o):\n    json.dump(o, open(p))',
    'def f(p):\n    Path(p).write_text("{}")',
    'def f(p, d):\n    with atomic_file(p) as tmp:\n        d.to_parquet(p)',
])
def test_the_check_catches_a_bare_write(code):
    assert unsafe_writes(ROOT / "src" / "relapse" / "probe.py", code + "\n")


def test_an_atomic_write_passes():
    code = ('def f(p, d):\n    with atomic_dir(p) as tmp:\n'
            '        d.to_parquet(tmp / "a.parquet")\n    return open(p).read()\n')
    assert unsafe_writes(ROOT / "src" / "relapse" / "probe.py", code) == []


def test_write_json_leaves_no_partial_file(tmp_path):
    """A failure while writing keeps the old file and leaves no temp file beside it."""
    from relapse.io import write_json

    target = tmp_path / "bench.json"
    write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json(target, {(1,): 2})          # not JSON: fails half-way through
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
