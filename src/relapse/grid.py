"""The experiment grid: hyperparameter ids, quantization ids, and the list of cells to compute.

Pure Python (no torch) because the Snakefile imports it to build its target lists.

An `{hp}` id is the sorted `key=value` pairs of one grid point joined by `_`, numbers written
with `%g` (so 1e-4 and 0.0001 are the same id), with more significant digits only where `%g`'s
six would not read back as the same number; the baselines use `default`. Keys may contain
`_`; values may not, which keeps the id parseable. Two distinct points of one method never
share an id (`method_hps` refuses them).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Iterable

BASELINES = ("target", "retrain")
_VALUE_RE = re.compile(r"^[A-Za-z0-9.+\-]+$")


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return _number(value)
    text = str(value)
    if not _VALUE_RE.match(text):
        raise ValueError(f"hyperparameter value {text!r} may only use letters, digits and . + -")
    return text


def _number(value: int | float) -> str:
    """The fewest significant digits, from `%g`'s 6 up, that read back as `value`: plain `%g`
    wrote 1e-4 and 1.00001e-4 both as 0.0001, one id for two grid points, and every id that
    `%g` already wrote exactly stays the same."""
    for digits in range(6, 18):
        text = "%.*g" % (digits, value)
        if float(text) == value:
            return text
    return repr(value)  # an int beyond a float's 53 bits, or nan


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


def hp_id(hp: dict[str, Any]) -> str:
    if not hp:
        return "default"
    return "_".join(f"{key}={format_value(hp[key])}" for key in sorted(hp))


def parse_hp_id(text: str) -> dict[str, Any]:
    """Inverse of `hp_id` (values come back as int, float, bool or str)."""
    if text == "default":
        return {}
    out: dict[str, Any] = {}
    pending = ""
    for token in text.split("_"):
        if "=" not in token:
            pending += token + "_"  # part of a key that itself contains "_"
            continue
        key, value = token.split("=", 1)
        out[pending + key] = parse_value(value)
        pending = ""
    if pending:
        raise ValueError(f"malformed hp id {text!r}")
    return out


def expand_grid(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of one grid; scalars count as one-element axes."""
    keys = sorted(grid)
    axes = [grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def method_hps(method_cfg: dict | list, default_params: list[str]) -> list[dict[str, Any]]:
    """All hp points of one method: its grid, or the union of its list of grids, in config order.
    A grid without `params` takes the global `unlearning.params` axis. The same point twice
    counts once; two different points with one id (e.g. the string "0.1" and the number 0.1)
    raise ValueError, as one would silently overwrite the other's results."""
    grids = method_cfg if isinstance(method_cfg, list) else [method_cfg]
    seen: dict[str, dict[str, Any]] = {}
    for grid in grids:
        grid = dict(grid)
        grid.setdefault("params", list(default_params))
        for point in expand_grid(grid):
            key = hp_id(point)
            first = seen.setdefault(key, point)
            if first != point:
                raise ValueError(f"grid points {first} and {point} both get hp id {key!r}")
    return list(seen.values())


def quant_id(name: str, bits: int) -> str:
    return f"{name}-w{bits}"


def parse_quant_id(text: str) -> tuple[str, int]:
    name, _, bits = text.rpartition("-w")
    if not name or not bits.isdigit():
        raise ValueError(f"malformed quant id {text!r}; expected NAME-wBITS, e.g. rtn-w4")
    return name, int(bits)


def quant_settings(cfg: dict) -> dict[str, dict[str, Any]]:
    """quant id -> {scheme, bits, name, and the scheme's settings} for every configured cell."""
    out = {}
    for entry in cfg["quantization"]["schemes"]:
        name = entry.get("name", entry["scheme"])
        settings = {k: v for k, v in entry.items() if k not in ("bits", "name")}
        for bits in entry["bits"]:
            out[quant_id(name, bits)] = {"name": name, "bits": bits, **settings}
    return out


@dataclass(frozen=True)
class Cell:
    """One (model, quantization) evaluation cell of the grid."""
    bench: str
    method: str
    hp: str
    seed: int
    quant: str

    @property
    def root(self) -> str:
        return f"results/{self.bench}/{self.method}/{self.hp}/s{self.seed}"

    @property
    def metrics(self) -> str:
        return f"{self.root}/{self.quant}/metrics.parquet"


def reference_seed(cfg: dict, bench: str) -> int:
    return int(resolved_bench(cfg, bench)["reference"].get("seed", 0))


def resolved_bench(cfg: dict, bench: str) -> dict[str, Any]:
    """A benchmark's config with `base:` resolved: the base's corpus and reference settings,
    overridden key by key by the benchmark's own."""
    entry = cfg["benchmarks"][bench]
    if "base" not in entry:
        return entry
    base = resolved_bench(cfg, entry["base"])
    merged = {k: v for k, v in base.items()}
    for key, value in entry.items():
        if key == "base":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged["base"] = entry["base"]
    return merged


def training_runs(method_cfg: dict | list, default_params: list[str]) -> dict[str, dict[str, Any]]:
    """Group a method's hp points that differ only in `epochs` into one training run, which saves
    a checkpoint at each of those epochs. Returns run id -> {"hp": hp with the largest epochs,
    "save_epochs": [...], "members": {hp id: epoch}}. The run id is the hp id with the epochs
    joined by "+", e.g. `epochs=10+20`."""
    groups: dict[str, dict[str, Any]] = {}
    for point in method_hps(method_cfg, default_params):
        rest = {k: v for k, v in point.items() if k != "epochs"}
        group = groups.setdefault(hp_id(rest), {"rest": rest, "epochs": {}})
        group["epochs"][hp_id(point)] = int(point.get("epochs", 0))
    runs = {}
    for group in groups.values():
        epochs = sorted(set(group["epochs"].values()))
        rid = hp_id({**group["rest"], "epochs": "+".join(map(str, epochs))}) if epochs != [0] \
            else hp_id(group["rest"])
        runs[rid] = {"hp": {**group["rest"], **({"epochs": epochs[-1]} if epochs != [0] else {})},
                     "save_epochs": epochs if epochs != [0] else None, "members": group["epochs"]}
    return runs


def method_runs(cfg: dict, method: str) -> dict[str, dict[str, Any]]:
    return training_runs(cfg["methods"][method], cfg["unlearning"].get("params", ["lora"]))


def run_of(cfg: dict, method: str, hp: str) -> tuple[str, int]:
    """(run id, epoch) of a configured hp id."""
    for rid, run in method_runs(cfg, method).items():
        if hp in run["members"]:
            return rid, run["members"][hp]
    raise KeyError(f"method {method!r} has no grid point {hp!r} in the config")


def unlearning_runs(cfg: dict) -> Iterable[tuple[str, str, str, int]]:
    """(bench, method, run id, seed) for every unlearning training job."""
    for bench in cfg["benchmarks"]:
        for method in cfg["methods"]:
            for rid in method_runs(cfg, method):
                for seed in cfg["seeds"]:
                    yield bench, method, rid, int(seed)


def unlearned_models(cfg: dict) -> Iterable[tuple[str, str, str, int]]:
    """(bench, method, hp id, seed) for every unlearned model (one per hp point)."""
    default_params = cfg["unlearning"].get("params", ["lora"])
    for bench in cfg["benchmarks"]:
        for method, method_cfg in cfg["methods"].items():
            for hp in method_hps(method_cfg, default_params):
                for seed in cfg["seeds"]:
                    yield bench, method, hp_id(hp), int(seed)


Selection = dict[str, set[tuple[str, str]]]


def selection_quant(cfg: dict) -> str:
    """The quant at which hps are selected (config report.selection.quant; full precision)."""
    return cfg.get("report", {}).get("selection", {}).get("quant", "none-w16")


def quantizes_selected(cfg: dict) -> bool:
    """quantization.models: selected -- only each method's selected hp is quantized."""
    return cfg["quantization"].get("models", "all") == "selected"


def model_quants(cfg: dict, bench: str, method: str, hp: str,
                 selected: Selection | None = None) -> list[str]:
    """The quants an unlearned model is evaluated at. Under `quantization.models: selected`, an
    hp that its method did not select (or any hp, before the selection is known) has only the
    selection quant."""
    quants = list(quant_settings(cfg))
    if not quantizes_selected(cfg) or (selected is not None
                                       and (method, hp) in selected.get(bench, set())):
        return quants
    return [selection_quant(cfg)]


def cells(cfg: dict, selected: Selection | None = None) -> list[Cell]:
    """Every evaluation cell: baselines under every quantization; unlearned models under every
    quantization, or (quantization.models: selected) at the selection quant, and under every
    quantization only where `selected` (bench -> {(method, hp)}) names them."""
    quants = list(quant_settings(cfg))
    out = []
    for bench in cfg["benchmarks"]:
        ref_seed = reference_seed(cfg, bench)
        for baseline in BASELINES:
            out += [Cell(bench, baseline, "default", ref_seed, q) for q in quants]
    for bench, method, hp, seed in unlearned_models(cfg):
        out += [Cell(bench, method, hp, seed, q)
                for q in model_quants(cfg, bench, method, hp, selected)]
    return out


def selection_cells(cfg: dict, bench: str) -> list[Cell]:
    """What a bench's hp selection reads: the target and every unlearned model at the
    selection quant."""
    quant = selection_quant(cfg)
    out = [Cell(bench, "target", "default", reference_seed(cfg, bench), quant)]
    return out + [Cell(bench, m, hp, seed, quant)
                  for b, m, hp, seed in unlearned_models(cfg) if b == bench]
