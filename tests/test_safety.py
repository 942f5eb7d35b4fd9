"""Loading never runs code from a file: weights come from safetensors only, no torch.load
without weights_only=True, trust_remote_code stays off (no config key turns it on). And the
report job's command line stays short whatever the config's size (Linux caps one argument at
128 KiB)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relapse.models.io import load_model, require_safetensors

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "src" / "relapse").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
ARG_MAX = 128 * 1024           # MAX_ARG_STRLEN: the longest single argument execve takes


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node


def test_a_pickle_only_model_folder_is_refused(tmp_path, tiny_lm):
    import torch

    folder, model, _ = tiny_lm
    # the layout of an old Hub checkpoint: config.json + a pickled pytorch_model.bin
    model.save_pretrained(str(tmp_path))
    for file in tmp_path.glob("*.safetensors"):
        file.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError) as err:
        load_model(tmp_path)
    message = str(err.value)
    for words in (str(tmp_path), "only pickle weights (pytorch_model.bin)", "safetensors only",
                  "safe_serialization=True"):
        assert words in message, message
    assert load_model(folder) is not None


def test_a_folder_without_weights_and_a_missing_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="it has no weight files"):
        require_safetensors(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        require_safetensors(tmp_path / "nope")


def test_torch_load_always_passes_weights_only_true():
    offenders = []
    for path in SOURCES:
        for call in calls(path):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            if name == "load" and owner == "torch":
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in call.keywords)
                if not ok:
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"
    # and no import-renamed way around the check
    for path in SOURCES:
        assert not re.search(r"from torch import .*\bload\b", path.read_text()), path


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _off_unless_configured(func, name: str) -> bool:
    """`name` is a parameter of `func` defaulting to False, or assigned from a config mapping's
    .get("trust_remote_code", False) (possibly through bool())."""
    args = func.args
    positional = args.posonlyargs + args.args
    defaults = dict(zip([a.arg for a in positional][::-1], args.defaults[::-1]))
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d})
    if name in defaults:
        return isinstance(defaults[name], ast.Constant) and defaults[name].value is False
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            text = ast.unparse(node.value).replace("'", '"')
            return re.fullmatch(r'(bool\()?\w+\.get\("trust_remote_code", False\)\)?',
                                text) is not None
    return False


def test_trust_remote_code_is_off_unless_the_config_sets_it():
    """Every trust_remote_code= passes the constant False, or a value that is False unless the
    config's `trust_remote_code` key says otherwise (a parameter defaulting to False, or
    cfg.get("trust_remote_code", False)); and the schema never defaults it to true."""
    checked = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for func in _functions(tree):
            for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
                for kw in call.keywords:
                    if kw.arg != "trust_remote_code":
                        continue
                    where = f"{path.relative_to(ROOT)}:{call.lineno}"
                    checked += 1
                    if isinstance(kw.value, ast.Constant):
                        assert kw.value.value is False, where
                    else:
                        assert isinstance(kw.value, ast.Name), where
                        assert _off_unless_configured(func, kw.value.id), where
    assert checked >= 3
    import inspect

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())

    def defaults_true(node):
        if isinstance(node, dict):
            entry = node.get("trust_remote_code")
            if isinstance(entry, dict) and entry.get("default") not in (None, False):
                return True
            return any(defaults_true(v) for v in node.values())
        return isinstance(node, list) and any(defaults_true(v) for v in node)

    assert not defaults_true(schema)


def test_the_off_by_default_check_catches_a_switch():
    bad = ast.parse("def f(ref_cfg):\n    trust = ref_cfg.get('trust_remote_code', True)\n")
    good = ast.parse("def f(ref_cfg, t=False):\n    trust = ref_cfg.get('trust_remote_code', False)\n")
    assert not _off_unless_configured(bad.body[0], "trust")
    assert _off_unless_configured(good.body[0], "trust")
    assert _off_unless_configured(good.body[0], "t")


def test_the_report_command_stays_short_for_a_config_over_128_kib(tmp_path):
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "small.yaml").read_text())
    # A list the schema allows at any length: the config's JSON now exceeds one argument's cap.
    cfg["evaluation"]["privleak"]["mink"] = [40] * 50_000
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/tables/metrics.parquet",
         "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1", "-n",
         "--printshellcmds", "--configfile", str(path)],
        capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    commands = [line.strip() for line in out.splitlines() if "relapse report " in line]
    assert len(commands) == 1, commands
    command = commands[0]
    assert len(command) < 8 * 1024, f"{len(command)} characters"
    settings = re.search(r"--settings @(\S+)", command).group(1).strip("'")
    import json

    written = json.loads((tmp_path / settings).read_text())
    assert written["config"]["evaluation"]["privleak"]["mink"] == [40] * 50_000
    assert len(json.dumps(written)) > ARG_MAX
