"""The README, config/README.md and docs/*.md link only to files that exist and to headings
that exist (GitHub's anchors), and the numbers the README and docs/benchmarks.md quote from a
benchmark JSON are that JSON's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target up to whitespace (a title may follow) or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).*?\1")


def pages(root: Path) -> list[Path]:
    return [root / "README.md", root / "config" / "README.md",
            *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lowercase; drop every character but letters,
    digits, spaces, hyphens and underscores; each space becomes a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link's text only
    text = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of `path`'s headings; a repeated slug gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        if m := HEADING.match(line):
            base = slug(m[2])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, line in prose_lines(path.read_text()):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):     # http(s), mailto: not fetched
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.name}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("heading, want", [
    ("Results, tables and the report", "results-tables-and-the-report"),
    ("`results/tables/metrics.parquet`", "resultstablesmetricsparquet"),
    ("Does it reproduce on a real LM?", "does-it-reproduce-on-a-real-lm"),
    ("Survival diagnostics (`diagnostics.parquet`)", "survival-diagnostics-diagnosticsparquet"),
    ("LLMEraser: instance-wise LoRA unlearning", "llmeraser-instance-wise-lora-unlearning"),
    ("Paper tables (`results/tables/`, each as `.md`, `.tex` booktabs, `.csv`)",
     "paper-tables-resultstables-each-as-md-tex-booktabs-csv"),
    ("snake_case and  two spaces", "snake_case-and--two-spaces"),
])
def test_slug_is_githubs(heading, want):
    assert slug(heading) == want


def test_every_page_exists_and_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert docs, "docs/ has no pages"
    for name in docs:
        assert f"](docs/{name}" in readme, f"README.md does not link docs/{name}"


@pytest.mark.parametrize("page", pages(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    assert broken_links(page) == []


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with commas\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Here\n\n"
        "[ok](other.md) [ok](other.md#a-section-with-commas) [ok](#here)\n"
        "[web](https://x.invalid/y)\n"
        "[gone](missing.md) [bad anchor](other.md#a-section) [bad in-page](#there)\n"
        "`[in code](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n")
    assert broken_links(page) == [
        "page.md:7: missing.md: no such file",
        "page.md:7: other.md#a-section: no heading #a-section in other.md",
        "page.md:7: #there: no heading #there in page.md",
    ]


# ---- numbers quoted from benchmarks/*.json

def bench(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / f"{name}.json").read_text())


def table_row(page: Path, script: str) -> str:
    rows = [line for line in page.read_text().splitlines() if line.startswith(f"| `{script}` |")]
    assert len(rows) == 1, f"{page.name}: one row for {script}"
    return rows[0].rsplit("|", 2)[1]      # the last column: the result


def pipeline_jobs(e2e: dict) -> int:
    # every job writes a per-rule benchmark TSV except the target rule `all`, which Snakemake
    # counts as one more job
    return sum(rule["jobs"] for rule in e2e["rules"].values()) + 1


def test_benchmarks_table_quotes_the_jsons():
    page = ROOT / "docs" / "benchmarks.md"
    engine = bench("eval_engine")
    row = table_row(page, "eval_engine.py")
    assert f"{engine['speedup']:.1f}× faster" in row
    assert f"{engine['identical_greedy_share']:.0%} identical greedy outputs" in row
    assert engine["forwards_per_scored_text"]["engine"]["per_distinct_text"] == 1.0
    assert "1 forward per scored text" in row

    e2e = bench("pipeline_e2e")
    row = table_row(page, "pipeline_e2e.py")
    assert row.strip().startswith(f"{e2e['cold_s']:.0f} s cold, {e2e['noop_s']:g} s no-op "
                                  f"({pipeline_jobs(e2e)} jobs")

    step = bench("unlearn_step")
    row = table_row(page, "unlearn_step.py")
    assert f"{step['overhead']:.1%} overhead (goal ≤ {step['goal_overhead']:.0%})" in row

    planning = bench("planning")["results"]
    row = table_row(page, "planning.py")
    assert " / ".join(f"{r['jobs']:,}" for r in planning) + " jobs in " + \
        " / ".join(f"{r['seconds']:.0f}" for r in planning) + " s" in row


def test_two_commands_quotes_the_pipeline_json():
    e2e = bench("pipeline_e2e")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    section = " ".join(section.split())          # the README wraps lines anywhere
    assert f"the default ({pipeline_jobs(e2e)} jobs:" in section
    assert f"takes about {e2e['cold_s'] / 60:.0f} min cold" in section
    assert f"`benchmarks/pipeline_e2e.json`: {e2e['cold_s']:.0f} s on a quiet machine" in section
    assert f"{e2e['noop_s']:g} s when nothing changed" in section
    train = e2e["rules"]["train_reference"]["mean_s"]
    assert f"the two reference trainings, {train:.0f} s each" in section
    run = json.loads((ROOT / "benchmarks" / "default_run" / "run.json").read_text())
    assert (f"`numerics: native` the cold run took {run['native_seconds']:.0f} s against "
            f"{run['seconds']:.0f} s portable") in section


def test_the_stage_table_names_every_rule_of_the_workflow():
    """The README's stage table (column `rule`) names exactly the workflow's rules: a rule added,
    renamed (prepare_data vs prepare_corpus) or removed must show up there."""
    import re

    root = Path(__file__).resolve().parents[1]
    rules = set()
    for path in [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]:
        rules |= set(re.findall(r"^(?:rule|checkpoint) (\w+):", path.read_text(), flags=re.M))
    text = (root / "README.md").read_text()
    table = text.split("| stage | rule | output |", 1)[1].split("\n\n", 1)[0]
    named = set()
    for line in table.splitlines()[2:]:
        named |= set(re.findall(r"`(\w+)`", line.split("|")[2]))
    assert named == rules - {"all"}, (sorted(rules - {"all"} - named), sorted(named - rules))


def test_the_readme_default_numbers_are_the_committed_runs():
    """README "What the default shows" is benchmarks/default_run.py's rendering of the committed
    reference run (benchmarks/default_run/*.csv): no number in it is copied by hand."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("default_run",
                                                  root / "benchmarks" / "default_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.readme_block(root / "README.md") == module.render(root / "benchmarks" /
                                                                    "default_run")


def test_the_readme_ranking_is_the_committed_defenses_run():
    """README "Which unlearning survives?" is benchmarks/run_tables.py's rendering of the committed
    run of config/defenses.yaml (benchmarks/defenses_run/ranking.csv), and that run ranked every
    method the config lists, each once."""
    import importlib.util

    import pandas as pd
    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("run_tables",
                                                  root / "benchmarks" / "run_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (root / "README.md").read_text()
    block = text.split(module.RANKING_BEGIN, 1)[1].split(module.RANKING_END, 1)[0].strip()
    assert block == module.render_ranking("defenses_run")
    ranked = pd.read_csv(root / "benchmarks" / "defenses_run" / "ranking.csv")
    config = yaml.safe_load((root / "config" / "defenses.yaml").read_text())
    assert sorted(ranked.method) == sorted(config["methods"])
    assert list(ranked.sort_values("rank").worst) == sorted(ranked.worst)


def test_the_real_lm_meta_evaluation_is_the_committed_smollm2_fine_run():
    """docs/real-models.md "Finer" is benchmarks/run_tables.py's rendering of the committed run
    of config/smollm2-fine.yaml, and that run covered every hp the config lists."""
    import importlib.util

    import pandas as pd
    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("run_tables",
                                                  root / "benchmarks" / "run_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (root / "docs" / "real-models.md").read_text()
    block = text.split(module.META_BEGIN, 1)[1].split(module.META_END, 1)[0].strip()
    assert block == module.render_meta("smollm2_fine_run")
    config = yaml.safe_load((root / "config" / "smollm2-fine.yaml").read_text())
    wanted = {(arm["params"], float(lr)) for arm in config["methods"]["npo_gdr"]
              for lr in arm["lr"]}
    revival = pd.read_csv(root / "benchmarks" / "smollm2_fine_run" / "revival.csv")
    got = {(module._hp_parts(hp)["params"], float(module._hp_parts(hp)["lr"]))
           for hp in revival.hp}
    assert got == wanted
