"""(slow) A tiny run end to end, then `snakemake --report`: the HTML holds every table and
figure with its rendered caption."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from progress_watch import run_watched, snakemake_progress

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "device": "cpu", "seeds": [0],
    "benchmarks": {"tiny": {
        "corpus": {"kind": "synthetic", "people": 20, "forget": 0.2, "holdout": 0.2, "seed": 0},
        "reference": {"kind": "train", "arch": {"hidden": 64, "layers": 2, "heads": 2,
                                                 "intermediate": 128},
                      "tokenizer": {"vocab_size": 512}, "lr": 3.0e-3, "batch_size": 16,
                      "max_epochs": 8}}},
    "unlearning": {"batch_size": 8},
    "methods": {"npo_gdr": {"params": "full", "lr": [1.0e-4, 3.0e-4], "epochs": 1, "alpha": 1}},
    "quantization": {"schemes": [{"scheme": "none", "bits": [16]},
                                 {"scheme": "rtn", "bits": [4], "group_size": 64}]},
    "evaluation": {"metrics": ["knowmem", "verbmem", "privleak"],
                   "knowmem": {"shots": 1, "max_items": 8, "max_new_tokens": 8},
                   "verbmem": {"max_new_tokens": 8, "max_items": 4},
                   "bootstrap": {"samples": 20}},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # Bounded by progress (no job event or log growth for 10 min), not by a wall clock.
    proc = run_watched([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                        "-d", str(workdir), "--cores", "2", *args],
                       stall_s=600, progress=snakemake_progress(workdir))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_html_report_of_a_finished_run(tmp_path):
    from relapse.report.plan import outputs

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    snakemake(tmp_path, "--configfile", str(config))
    for output in outputs().values():
        assert (tmp_path / output.path).stat().st_size > 0, output.path
    snakemake(tmp_path, "--configfile", str(config), "--report", "results/report.html")
    html = (tmp_path / "results" / "report.html").read_text()
    for output in outputs().values():
        if output.caption:
            assert Path(output.path).name in html, output.path
    # captions are rendered with the run's config: the selection rule and the quantizers
    assert "keep KnowMem_r at or above 90% of the target" in html
    assert "Knowledge retained" in html and "group size 64" in html
    # A bad cell table stops the run in check_cells, naming the file, before the report job
    # starts: the previous tables stay (Snakemake removes a job's outputs when it starts).
    summary = (tmp_path / "results" / "tables" / "summary.md").read_text()
    cells = sorted((tmp_path / "results" / "tiny").glob("*/*/s0/*/metrics.parquet"))
    victim, other = cells[0], next(c for c in cells if c.parent.parent != cells[0].parent.parent)
    for bad, why in ((b"\0garbage" * 512, "not a readable Parquet file"),
                     (other.read_bytes(), "another cell")):
        victim_bytes = victim.read_bytes()
        victim.write_bytes(bad)
        proc = run_watched([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                            "-d", str(tmp_path), "--cores", "2", "--configfile", str(config)],
                           stall_s=600, progress=snakemake_progress(tmp_path))
        log = (tmp_path / "logs" / "report" / "check_cells.log").read_text()
        assert proc.returncode != 0 and str(victim.relative_to(tmp_path)) in log and why in log
        assert (tmp_path / "results" / "tables" / "summary.md").read_text() == summary
        victim.write_bytes(victim_bytes)
    assert "system-message" not in html and "Undefined substitution" not in html
    # the rule hands every cell's samples.parquet to the report: knowledge retained has its
    # paired-bootstrap interval for every unlearned row
    import pandas as pd

    retained = pd.read_csv(tmp_path / "results" / "tables" / "retained.csv")
    unlearned = retained[retained.method == "npo_gdr"]
    assert len(unlearned) and unlearned.filter(like="KnowMem_f lo").notna().all().all()


# --- captions: every one renders as clean reStructuredText ---------------------------------------

CAPTIONS = sorted((ROOT / "workflow" / "report").glob("*.rst"))
# What Snakemake appends to every caption before rendering it (snakemake/report/__init__.py):
# link targets for the workflow panels, each category and each result file.
SNAKEMAKE_LINKS = """

.. _Workflow: javascript:show_panel('workflow')
.. _Statistics: javascript:show_panel('statistics')
"""


def render_caption(path: Path, config: dict) -> str:
    """A caption as Snakemake renders it (Jinja with the run's config, then docutils to HTML),
    except that any docutils warning or error raises instead of landing in the reader's page."""
    import io

    from docutils.core import publish_parts
    from docutils.utils import SystemMessage
    from jinja2 import Environment, StrictUndefined

    class Snakemake:
        pass

    Snakemake.config = config
    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    text = env.from_string(path.read_text() + SNAKEMAKE_LINKS).render(
        snakemake=Snakemake, categories={}, files=[])
    stream = io.StringIO()
    try:
        html = publish_parts(text, writer="html", settings_overrides={
            "report_level": 2, "halt_level": 2, "warning_stream": stream})["body"]
    except SystemMessage as err:
        raise AssertionError(f"{path.name}: {err}") from None
    assert not stream.getvalue(), f"{path.name}: {stream.getvalue()}"
    assert "system-message" not in html and "problematic" not in html, path.name
    return html


def test_every_caption_is_clean_restructuredtext(default_config):
    """The HTML report once showed its reader 'Undefined substitution referenced: ΔW' (from
    |ΔW| in a caption): no caption may produce any docutils warning or error."""
    from relapse.report.plan import outputs

    used = {(ROOT / "workflow" / "rules" / o.caption).resolve()
            for o in outputs(diagnostics=True, relearn=True, attacks=True).values()
            if o.caption}
    assert used <= set(CAPTIONS) and ROOT / "workflow" / "report" / "workflow.rst" in CAPTIONS
    for path in CAPTIONS:
        html = render_caption(path, default_config)
        assert len(html) > 200, path.name


def test_the_caption_check_catches_a_substitution(tmp_path, default_config):
    bad = tmp_path / "bad.rst"
    bad.write_text("mean |ΔW| over the quantization step\n")
    with pytest.raises(AssertionError, match="Undefined substitution"):
        render_caption(bad, default_config)

