import pytest

from relapse import grid
from relapse.quantize import plan as quantize_plan


def test_hp_id_is_sorted_and_uses_g_format():
    hp = {"lr": 1e-4, "epochs": 10, "alpha": 5.0, "params": "full"}
    assert grid.hp_id(hp) == "alpha=5_epochs=10_lr=0.0001_params=full"
    assert grid.hp_id({}) == "default"


@pytest.mark.parametrize("hp", [
    {"lr": 0.0003, "epochs": 20, "beta": 0.1, "params": "lora"},
    {"batch_size": 8, "lr": 1e-05, "grad_accum": 4},
    {"flag": True, "name": "x-y.z"},
])
def test_parse_inverts_hp_id(hp):
    assert grid.parse_hp_id(grid.hp_id(hp)) == hp


@pytest.mark.parametrize("value,text", [
    (1.000001e-4, "0.0001000001"),    # %g wrote 0.0001: the same id as 1e-4
    (0.1 + 0.2, "0.30000000000000004"),
    (1234567, "1234567"),             # %g wrote 1.23457e+06
    (3e-3, "0.003"), (5.0, "5"), (1e-05, "1e-05"), (1000000, "1e+06"),   # as %g wrote them
])
def test_hp_values_keep_every_digit_that_tells_them_apart(value, text):
    assert grid.hp_id({"lr": value}) == f"lr={text}"
    assert grid.parse_hp_id(f"lr={text}") == {"lr": value}


def test_nearby_grid_values_get_distinct_ids():
    points = grid.method_hps({"lr": [1.0e-4, 1.000001e-4], "epochs": 10}, ["full"])
    assert [p["lr"] for p in points] == [1.0e-4, 1.000001e-4]
    assert len({grid.hp_id(p) for p in points}) == 2


def test_distinct_grid_points_with_one_id_are_an_error():
    # the string "0.1" and the number 0.1 both write beta=0.1
    with pytest.raises(ValueError, match=r"\{.*'beta': 0.1.*\} and \{.*'beta': '0.1'.*\}.*beta=0.1"):
        grid.method_hps([{"beta": 0.1}, {"beta": "0.1"}], ["full"])
    # the same point twice (here 1e-4 and 0.0001) is one point, not a collision
    assert len(grid.method_hps([{"lr": 1e-4}, {"lr": 0.0001}], ["full"])) == 1


def test_hp_values_with_underscore_are_rejected():
    with pytest.raises(ValueError):
        grid.hp_id({"params": "a_b"})


def test_method_hps_expands_lists_of_grids_and_default_params():
    cfg = [{"params": "full", "lr": [1e-4, 3e-4], "epochs": [10, 20]},
           {"params": "lora", "lr": 1e-3, "epochs": 10}]
    points = grid.method_hps(cfg, ["lora"])
    assert len(points) == 5
    assert grid.method_hps({"lr": [1, 2]}, ["lora", "full"])[0]["params"] == "lora"
    assert len(grid.method_hps({"lr": [1, 2]}, ["lora", "full"])) == 4


def test_quant_ids_round_trip():
    assert grid.parse_quant_id("bnb_nf4-w4") == ("bnb_nf4", 4)
    with pytest.raises(ValueError):
        grid.parse_quant_id("rtn4")


def test_cells_of_default_config(default_config):
    cells = grid.cells(default_config)
    # 2 benches x (2 baselines + 5 unlearned) x 3 quants
    assert len(cells) == 2 * 7 * 3
    assert len({c.metrics for c in cells}) == len(cells)
    assert {c.quant for c in cells} == {"none-w16", "rtn-w8", "rtn-w4"}


def test_resolved_bench_inherits_base(default_config):
    qat = grid.resolved_bench(default_config, "synthbio-qat")
    assert qat["corpus"] == default_config["benchmarks"]["synthbio"]["corpus"]
    assert qat["reference"]["snap"]["bits"] == 4
    assert qat["reference"]["arch"]["hidden"] == 128


def test_epoch_axis_becomes_one_run_with_checkpoints():
    cfg = [{"params": "full", "lr": [1e-4, 3e-4], "epochs": [10, 20], "alpha": 5},
           {"params": "lora", "lr": 1e-3, "epochs": 10}]
    runs = grid.training_runs(cfg, ["lora"])
    assert len(runs) == 3
    run = runs["alpha=5_epochs=10+20_lr=0.0001_params=full"]
    assert run["hp"]["epochs"] == 20 and run["save_epochs"] == [10, 20]
    assert run["members"] == {"alpha=5_epochs=10_lr=0.0001_params=full": 10,
                              "alpha=5_epochs=20_lr=0.0001_params=full": 20}
    assert runs["epochs=10_lr=0.001_params=lora"]["save_epochs"] == [10]


def test_run_of_maps_every_hp_to_its_run(default_config):
    for bench, method, hp, seed in grid.unlearned_models(default_config):
        rid, epoch = grid.run_of(default_config, method, hp)
        assert grid.parse_hp_id(hp)["epochs"] == epoch
        assert str(epoch) in str(grid.parse_hp_id(rid)["epochs"]).split("+")
    with pytest.raises(KeyError):
        grid.run_of(default_config, "npo_gdr", "lr=9")


def test_selected_models_are_quantized_only_once_chosen(default_config):
    """quantization.models: selected: before the selection, every unlearned model has only the
    selection quant (and no diagnostics); once chosen, the chosen hp has every quant."""
    cfg = {**default_config, "quantization": {**default_config["quantization"],
                                              "models": "selected"}}
    before = grid.cells(cfg)
    unlearned = [c for c in before if c.method not in grid.BASELINES]
    assert {c.quant for c in unlearned} == {"none-w16"}
    assert {c.quant for c in before if c.method == "target"} == {"none-w16", "rtn-w8", "rtn-w4"}
    assert quantize_plan.diagnostics_files(cfg) == [] and quantize_plan.has_diagnostics(cfg)
    method, hp = unlearned[0].method, unlearned[0].hp
    chosen = {"synthbio": {(method, hp)}}
    after = grid.cells(cfg, chosen)
    assert {c.quant for c in after if (c.bench, c.method, c.hp) == ("synthbio", method, hp)} \
        == {"none-w16", "rtn-w8", "rtn-w4"}
    others = [c for c in after if c.method not in grid.BASELINES
              and (c.bench, c.method, c.hp) != ("synthbio", method, hp)]
    assert others and {c.quant for c in others} == {"none-w16"}
    assert quantize_plan.diagnostics_files(cfg, chosen) == [
        f"results/synthbio/{method}/{hp}/s{s}/diagnostics.parquet" for s in cfg["seeds"]]
    # all: the selection does not matter
    assert grid.cells(default_config, chosen) == grid.cells(default_config)
    sel = grid.selection_cells(cfg, "synthbio")
    assert {c.quant for c in sel} == {"none-w16"} and sel[0].method == "target"
    assert len(sel) == 1 + len([m for m in grid.unlearned_models(cfg) if m[0] == "synthbio"])
