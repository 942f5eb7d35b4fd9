"""Which cells the attacks and the representation diagnostics run on: pure Python (no torch),
as the Snakefile imports it to build its target lists.

The slice is set by `attacks:` in the config: the quant ids attacked (`quants`; none: no attack
runs), on the `benchmarks` listed (none: all), the `baselines` listed (target, retrain), and the
unlearned models whose hp matches `hps` (key -> value or list of values; {} matches every hp),
or any one of a list of such points (the DAG is static: the report's hp selection is not known
when it is planned, so a config lists the hp it expects to be selected beside the others), or
`selected`: each method's hp that the select_hps checkpoint picks (the workflow passes its pick,
bench -> {(method, hp)}, as `selected`; before it is known, only the baselines are attacked).
With `represent.attacked`, the representation diagnostics also run on every attacked model
folder of an unlearned model at each represented quant that is attacked. Pruning also runs on
the target of each attacked bench (`matched_models`): the durability table divides by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from relapse import grid

ATTACKS_TABLE = "results/tables/attacks.parquet"
RELEARN_TABLE = "results/tables/relearn.parquet"
DURABILITY_STEM = "results/tables/durability"
LABELS_TABLE = "results/tables/labels.csv"
SELECTED = "selected"                 # attacks.hps: follow the hp selection (select_hps)

Selection = dict[str, set[tuple[str, str]]]


@dataclass(frozen=True)
class AttackCell:
    bench: str
    method: str
    hp: str
    seed: int
    quant: str
    attack: str
    variant: str

    @property
    def root(self) -> str:
        return f"results/{self.bench}/{self.method}/{self.hp}/s{self.seed}/{self.quant}"

    @property
    def models(self) -> str:
        return f"{self.root}/{self.attack}/models"

    @property
    def metrics(self) -> str:
        return f"{self.root}/{self.attack}/{self.variant}/metrics.parquet"

    @property
    def samples(self) -> str:
        return f"{self.root}/{self.attack}/{self.variant}/samples.parquet"


def _matches(hp: str, wanted: dict[str, Any]) -> bool:
    """Whether an hp id has every `wanted` value (compared as hp ids write them: 3e-4 = 0.0003)."""
    point = grid.parse_hp_id(hp)
    for key, value in wanted.items():
        allowed = {grid.format_value(v) for v in (value if isinstance(value, list) else [value])}
        if key not in point or grid.format_value(point[key]) not in allowed:
            return False
    return True


def in_slice(hp: str, hps: dict[str, Any] | list[dict[str, Any]]) -> bool:
    """Whether an hp id is in the slice: it matches `hps`, or one point of a list of them."""
    points = hps if isinstance(hps, list) else [hps]
    return any(_matches(hp, point) for point in points)


def follows_selection(cfg: dict) -> bool:
    """attacks.hps: selected -- the attacked hps are known only once select_hps has run."""
    return cfg.get("attacks", {}).get("hps") == SELECTED


def attacked_models(cfg: dict, selected: Selection | None = None
                    ) -> list[tuple[str, str, str, int]]:
    """(bench, method, hp, seed) of every model the attacks cover; under `hps: selected`, the
    unlearned ones are those `selected` names (none while it is None)."""
    acfg = cfg.get("attacks", {})
    benches = acfg.get("benchmarks") or list(cfg["benchmarks"])
    out = []
    for bench in benches:
        seed = grid.reference_seed(cfg, bench)
        out += [(bench, b, "default", seed) for b in grid.BASELINES
                if b in acfg.get("baselines", grid.BASELINES)]
    if follows_selection(cfg):
        chosen = selected or {}
        return out + [m for m in grid.unlearned_models(cfg)
                      if m[0] in benches and (m[1], m[2]) in chosen.get(m[0], set())]
    out += [m for m in grid.unlearned_models(cfg)
            if m[0] in benches and in_slice(m[2], acfg.get("hps", {}))]
    return out


def attacks_unlearned(cfg: dict) -> bool:
    """Whether an unlearned model will be attacked (the durability table and the ranking
    exist), known before any selection: under `hps: selected` every method of an attacked
    bench has a selected hp."""
    acfg = cfg.get("attacks", {})
    if not acfg.get("quants") or not enabled_attacks(cfg):
        return False
    if follows_selection(cfg):
        benches = acfg.get("benchmarks") or list(cfg["benchmarks"])
        return any(m[0] in benches for m in grid.unlearned_models(cfg))
    return any(m[1] not in grid.BASELINES for m in attacked_models(cfg))


def attacks_relearn(cfg: dict) -> bool:
    """Whether a relearning cell will exist (the relearning-curves table), before selection."""
    acfg = cfg.get("attacks", {})
    return bool("relearn" in enabled_attacks(cfg) and acfg.get("quants")
                and (attacked_models(cfg) or attacks_unlearned(cfg)))


def attacks_represent(cfg: dict) -> bool:
    """Whether a repr.parquet will exist, before selection: representations are enabled and an
    unlearned model is attacked (represent_files lists only unlearned models)."""
    rcfg = cfg.get("attacks", {}).get("represent", {})
    return bool(rcfg.get("enabled", False) and rcfg.get("quants") and attacks_unlearned(cfg))


def enabled_attacks(cfg: dict) -> list[str]:
    acfg = cfg.get("attacks", {})
    return [a for a in ("relearn", "prune") if acfg.get(a, {}).get("enabled", False)]


def check(cfg: dict) -> None:
    """Every attacked / represented quant id and benchmark is one of the config's, and
    `represent.attacked` has an attacked quant to run on."""
    quants = grid.quant_settings(cfg)
    acfg = cfg.get("attacks", {})
    unknown = [b for b in acfg.get("benchmarks", []) if b not in cfg["benchmarks"]]
    if unknown:
        raise ValueError(f"attacks.benchmarks: {', '.join(unknown)} is not a benchmark of this "
                         f"config; allowed: {', '.join(cfg['benchmarks'])}")
    for where, ids in (("attacks.quants", acfg.get("quants", [])),
                       ("attacks.represent.quants", acfg.get("represent", {}).get("quants", []))):
        unknown = [q for q in ids if q not in quants]
        if unknown:
            raise ValueError(f"{where}: {', '.join(unknown)} is not a quant of this config; "
                             f"allowed: {', '.join(quants)}")
    rcfg = acfg.get("represent", {})
    if rcfg.get("attacked", False) and rcfg.get("quants") and \
            not set(rcfg["quants"]) & set(acfg.get("quants", [])):
        raise ValueError("attacks.represent.attacked: none of attacks.represent.quants "
                         f"({', '.join(rcfg['quants'])}) is attacked (attacks.quants: "
                         f"{', '.join(acfg.get('quants', [])) or 'none'})")
    _check_slice(cfg)
    _check_label(cfg)


def _check_slice(cfg: dict) -> None:
    """`hps` matches an unlearned model of the attacked benchmarks: a slice that matches none (a
    typo, a value not in the grid) would drop every attacked unlearned model, and with them the
    durability table, from the plan without a word. (One point of a list may match nothing: a
    config that narrows its grid keeps the default's list.)"""
    acfg = cfg.get("attacks", {})
    if not acfg.get("quants") and not (acfg.get("represent", {}).get("enabled", False)
                                       and acfg.get("represent", {}).get("quants")):
        return
    hps_cfg = acfg.get("hps", {})
    if hps_cfg == [] or hps_cfg == SELECTED:
        return                         # the baselines only, on purpose; or the selection's hps
    benches = acfg.get("benchmarks") or list(cfg["benchmarks"])
    hps = sorted({(m, hp) for b, m, hp, _ in grid.unlearned_models(cfg) if b in benches})
    if any(in_slice(hp, hps_cfg) for _, hp in hps):
        return
    shown = [f"{m} {hp}" for m, hp in hps[:12]] + (["..."] if len(hps) > 12 else [])
    raise ValueError(f"attacks.hps: {hps_cfg} matches no unlearned model, so no unlearned model "
                     f"would be attacked; allowed: a point that matches one of (method hp): "
                     f"{'; '.join(shown)}")


def _check_label(cfg: dict) -> None:
    """What the durability label reads exists: its quant is attacked, its steps are relearned,
    and relearning runs on forget data and on its control (otherwise every model would be
    labelled `undetermined`)."""
    acfg = cfg.get("attacks", {})
    relearn = acfg.get("relearn", {})
    if not acfg.get("quants") or not relearn.get("enabled", False) or acfg.get("hps") == []:
        return                         # no durability table: no attacked unlearned model
    label = acfg.get("label", {})
    quants = acfg["quants"]
    if label.get("quant") is not None and label["quant"] not in quants:
        raise ValueError(f"attacks.label.quant: {label['quant']!r} is not attacked; allowed: "
                         f"one of attacks.quants ({', '.join(quants)}), or null (full precision)")
    steps = relearn.get("steps", [])
    if label.get("steps") is not None and label["steps"] not in steps:
        raise ValueError(f"attacks.label.steps: {label['steps']} is not a relearning step count; "
                         f"allowed: one of attacks.relearn.steps ({', '.join(map(str, steps))}), "
                         "or null (the largest)")
    data = relearn.get("data", [])
    for needed, key in (("forget", "attacks.relearn.data"),
                        (label.get("control", "holdout"), "attacks.label.control")):
        if needed not in data:
            raise ValueError(f"{key}: the label needs relearning on {needed!r}, but "
                             f"attacks.relearn.data is {', '.join(data)}; allowed: add {needed} "
                             "to attacks.relearn.data" + (
                                 f", or a control among {', '.join(d for d in data if d != 'forget')}"
                                 if key.endswith("control") and set(data) - {"forget"} else ""))


def matched_models(cfg: dict, attack: str, selected: Selection | None = None
                   ) -> list[tuple[str, str, str, int]]:
    """The attacked models, and for `prune` the target of every attacked bench with an attacked
    unlearned model even where `baselines` leaves it out: knowledge retained after pruning at s
    divides by the target pruned at s (matched, as a quantized model's by the target at its
    quant), so the target is pruned as the retrain model is relearned."""
    models = attacked_models(cfg, selected)
    if attack != "prune":
        return models
    benches = dict.fromkeys(b for b, m, _, _ in models if m not in grid.BASELINES)
    if follows_selection(cfg):       # the same target jobs before and after the selection
        benches = dict.fromkeys(b for b, m, _, _ in grid.unlearned_models(cfg)
                                if b in (cfg["attacks"].get("benchmarks") or cfg["benchmarks"]))
    extra = [(b, "target", "default", grid.reference_seed(cfg, b)) for b in benches
             if (b, "target", "default", grid.reference_seed(cfg, b)) not in models]
    return models + extra


def attack_cells(cfg: dict, selected: Selection | None = None) -> list[AttackCell]:
    from relapse.attacks.registry import get_attack

    acfg = cfg.get("attacks", {})
    out = []
    for name in enabled_attacks(cfg):
        variants = list(get_attack(name).variants(acfg[name]))
        for bench, method, hp, seed in matched_models(cfg, name, selected):
            for quant in acfg.get("quants", []):
                out += [AttackCell(bench, method, hp, seed, quant, name, v) for v in variants]
    return out


def represent_files(cfg: dict, selected: Selection | None = None) -> list[str]:
    """repr.parquet of every unlearned model of the slice at each `represent.quants`, and with
    `represent.attacked` of each of its attacked model folders at those quants (attacked ones):
    {quant}/{attack}/{variant}/repr.parquet, compared with the un-attacked references."""
    rcfg = cfg.get("attacks", {}).get("represent", {})
    if not rcfg.get("enabled", False):
        return []
    quants = rcfg.get("quants", [])
    models = [m for m in attacked_models(cfg, selected) if m[1] not in grid.BASELINES]
    out = [f"results/{b}/{m}/{hp}/s{seed}/{q}/repr.parquet"
           for b, m, hp, seed in models for q in quants]
    if rcfg.get("attacked", False):
        out += [f"{c.root}/{c.attack}/{c.variant}/repr.parquet"
                for c in attack_cells(cfg, selected)
                if c.method not in grid.BASELINES and c.quant in quants]
    return out


def durability_samples(cfg: dict, selected: Selection | None = None) -> list[str]:
    """The samples.parquet the durability verdict pairs by item: every attacked cell's, the
    attacked models' un-attacked cells', and the target's at each attacked quant."""
    quants = cfg.get("attacks", {}).get("quants", [])
    out = [c.samples for c in attack_cells(cfg, selected)]
    out += [f"{c.root}/{c.quant}/samples.parquet" for c in baseline_cells(cfg, selected)]
    benches = dict.fromkeys(m[0] for m in attacked_models(cfg, selected))
    out += [f"results/{b}/target/default/s{grid.reference_seed(cfg, b)}/{q}/samples.parquet"
            for b in benches for q in quants]
    return list(dict.fromkeys(out))


def baseline_cells(cfg: dict, selected: Selection | None = None) -> Iterable[grid.Cell]:
    """The un-attacked cells of the attacked models: step 0 of every curve."""
    quants = cfg.get("attacks", {}).get("quants", [])
    for bench, method, hp, seed in attacked_models(cfg, selected):
        for quant in quants:
            yield grid.Cell(bench, method, hp, seed, quant)
