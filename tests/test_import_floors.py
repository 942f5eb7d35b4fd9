"""The package's floors run one way (issue "[house] one-way imports"):

    helpers -> data -> models -> (unlearn | quantize | attacks) -> evaluate -> report

with cli.py, config.py, unlock.py and the workflow on top. A module may import its own floor and
the floors below it, never a floor above; unlearn, quantize and attacks never import each other;
report reads Parquet, so it imports neither torch (nor a library built on it) nor any stage
package. Every import is checked, module-level and inside functions, by parsing the source with
`ast` (nothing is imported here).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "relapse"

# Top-level helper modules sit below everything. relapse.grid is pure-Python naming (hp ids,
# quant ids, the grid's cells) that the Snakefile, attacks.plan and report all read: a helper.
HELPERS = {"relapse", "relapse.io", "relapse.seeding", "relapse.provenance", "relapse.schedule",
           "relapse.stats", "relapse.progress", "relapse.grid", "relapse.fingerprint",
           "relapse.numerics"}
# Orchestration on top: may import anything; nothing in a floor may import it.
TOP = {"relapse.config", "relapse.config_checks", "relapse.unlock", "relapse.runlog", "relapse.cli",
       "relapse.__main__"}
FLOORS = {"data": 1, "models": 2, "unlearn": 3, "quantize": 3, "attacks": 3, "evaluate": 4,
          "report": 5}
SIDEWAYS = {"unlearn", "quantize", "attacks"}      # one floor, three stages: no imports between
REPORT_FORBIDDEN_PACKAGES = {"models", "unlearn", "quantize", "attacks", "evaluate"}
TORCH_LIBRARIES = {"torch", "transformers", "peft", "accelerate", "bitsandbytes", "gptqmodel"}

# Imports that break the rule on purpose, (importer, imported) -> why.
ALLOWED = {
    ("relapse.attacks.kinds.relearn", "relapse.unlearn.registry"):
        "relearning runs as an unlearning Method (NLL descent) through the same training step",
    ("relapse.attacks.kinds.relearn", "relapse.unlearn.step"):
        "relearning reuses the unlearning step (StepContext, accumulate_step) so both train alike",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {module_name(p) for p in PACKAGE.rglob("__init__.py")}


def floor(module: str) -> tuple[str, int | None]:
    """(kind, floor): kind is "helper", "top" or the stage package; floor None for top."""
    if module in HELPERS:
        return "helper", 0
    if module in TOP:
        return "top", None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FLOORS:
        return parts[1], FLOORS[parts[1]]
    raise AssertionError(f"{module} has no floor: add it to HELPERS, TOP or FLOORS in "
                         f"{Path(__file__).name}")


def imports(module: str, path: Path):
    """(line, imported module) of every import in the file, relative ones resolved; for
    `from pkg import name`, the submodule pkg.name when there is one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if module in PACKAGES else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            yield from ((node.lineno, s) for s in subs)
            if len(subs) < len(node.names):
                yield node.lineno, target


def violation(importer: str, imported: str) -> str | None:
    kind, level = floor(importer)
    if kind == "top":
        return None
    if kind == "report" and imported.split(".")[0] in TORCH_LIBRARIES:
        return "report reads Parquet: no torch library"
    if not imported.startswith("relapse.") and imported != "relapse":
        return None
    target_kind, target_level = floor(imported)
    if target_kind == "top":
        return f"imports orchestration ({imported} sits above every floor)"
    if kind == "report" and target_kind in REPORT_FORBIDDEN_PACKAGES:
        return f"report reads Parquet: it may not import {target_kind}"
    if target_level > level:
        return f"points up a floor ({kind} {level} -> {target_kind} {target_level})"
    if kind != target_kind and kind in SIDEWAYS and target_kind in SIDEWAYS:
        return f"points sideways ({kind} -> {target_kind})"
    return None


def all_violations() -> list[tuple[str, str]]:
    found = []
    for module, path in MODULES.items():
        for line, imported in imports(module, path):
            why = violation(module, imported)
            if why and (module, imported) not in ALLOWED:
                found.append((module, imported,
                              f"{path.relative_to(SRC.parent)}:{line}: {module} imports "
                              f"{imported}: {why}"))
    return found


def test_every_module_has_a_floor():
    for module in MODULES:
        floor(module)


def test_imports_run_one_way():
    found = all_violations()
    assert not found, "imports against the floors:\n" + "\n".join(f[2] for f in found)


def test_allowed_exceptions_are_still_needed():
    """An ALLOWED entry whose import is gone is removed, so the list stays the true one."""
    seen = {(module, imported) for module, path in MODULES.items()
            for _, imported in imports(module, path)}
    stale = [pair for pair in ALLOWED if pair not in seen]
    assert not stale, f"ALLOWED entries no longer imported: {stale}"
    for module, imported in ALLOWED:
        assert violation(module, imported), f"{module} -> {imported} needs no exception"


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    source = ("import os\nfrom . import figures\n\ndef f():\n    import torch\n"
              "    from relapse.evaluate.registry import get_metric\n")
    path = tmp_path / "x.py"
    path.write_text(source)
    found = {(imported, violation("relapse.report.x", imported))
             for _, imported in imports("relapse.report.x", path)}
    assert ("relapse.report.figures", None) in found
    assert ("os", None) in found
    assert {i for i, why in found if why} == {"torch", "relapse.evaluate.registry"}
    assert violation("relapse.data.world", "relapse.models.generation")
    assert violation("relapse.quantize.modules", "relapse.unlearn.trainer")
    assert violation("relapse.models.io", "relapse.config")
    assert violation("relapse.cli", "relapse.report.build") is None
