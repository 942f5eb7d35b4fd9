"""The config is validated before any job runs; a bad value names the key, value and allowed set."""

import copy

import pytest
import yaml

from relapse.config import ConfigError, validate


@pytest.fixture(scope="module")
def raw(root):
    return yaml.safe_load((root / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults(raw):
    cfg = validate(raw)
    assert cfg["evaluation"]["bootstrap"]["samples"] == 1000
    assert cfg["unlearning"]["grad_clip"] == 1.0
    assert raw.get("seeds") == cfg["seeds"] == [0]
    assert "bootstrap" not in raw.get("evaluation", {}), "validate must not mutate its input"


def _set(cfg, path, value):
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()

BAD = [
    # (path, value, words the message must contain)
    (("methods", "npo_gdrr"), {"lr": 1e-4}, ["methods.npo_gdrr", "unknown method", "npo_gdr"]),
    (("methods", "npo_gdr", 0, "lr"), [-1e-4], ["methods.npo_gdr[0].lr", "-0.0001"]),
    (("methods", "npo_gdr", 0, "lr"), [], ["methods.npo_gdr[0].lr"]),
    (("methods", "npo_gdr", 0, "epochs"), 0, ["methods.npo_gdr[0].epochs", "0"]),
    (("methods", "npo_gdr", 0, "params"), "half", ["methods.npo_gdr[0].params", "half", "lora", "full"]),
    (("methods", "npo_gdr", 0, "gamma"), 0.5, ["methods.npo_gdr[0].gamma", "allowed", "beta"]),
    (("methods",), {}, ["methods"]),
    (("quantization", "schemes", 1, "bits"), [16], ["quantization.schemes[1].bits", "16", "rtn"]),
    (("quantization", "schemes", 1, "scheme"), "rtm", ["quantization.schemes[1].scheme", "rtm", "rtn"]),
    (("quantization", "schemes", 1, "group_size"), "64", ["quantization.schemes[1].group_size", "'64'"]),
    (("device",), "tpu", ["device", "tpu", "cuda"]),
    (("seeds",), [], ["seeds"]),
    (("seeds",), [-1], ["seeds[0]", "-1"]),
    (("benchmarks", "synthbio", "corpus", "forget"), 1.5, ["benchmarks.synthbio.corpus.forget", "1.5"]),
    (("benchmarks", "synthbio", "corpus", "kind"), "wikipedia", ["benchmarks.synthbio.corpus.kind", "wikipedia", "synthetic"]),
    (("benchmarks", "synthbio-qat", "base"), "nope", ["benchmarks.synthbio-qat.base", "nope", "synthbio"]),
    (("benchmarks", "synthbio", "reference", "arch", "layers"), 0, ["benchmarks.synthbio.reference.arch.layers", "0"]),
    (("evaluation", "knowmem", "shots"), 11, ["evaluation.knowmem.shots", "11"]),
    (("evaluation", "metrics"), ["knowmem", "bleu"], ["evaluation.metrics", "bleu", "verbmem"]),
    (("unlearning", "loss_variant"), "open-unlearning", ["unlearning.loss_variant", "open-unlearning", "muse"]),
    (("colour",), "red", ["unknown key", "colour"]),
    (("unlearning", "micro_batch_size"), 3, ["unlearning.micro_batch_size", "3", "batch_size 8"]),
    (("methods", "rmu"), {"lr": 1e-3, "beta": 0.1}, ["methods.rmu[0].beta", "steer"]),
    (("benchmarks", "synthbio", "reference"), _DELETE, ["benchmarks.synthbio.reference", "required"]),
]


@pytest.mark.parametrize("path,value,words", BAD, ids=[".".join(map(str, b[0])) + f"={b[1]!r}" for b in BAD])
def test_bad_config_is_rejected_with_the_key_named(raw, path, value, words):
    cfg = copy.deepcopy(raw)
    _set(cfg, path, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_duplicate_quant_ids_are_rejected(raw):
    cfg = copy.deepcopy(raw)
    cfg["quantization"]["schemes"].append({"scheme": "rtn", "bits": [4], "group_size": 128})
    with pytest.raises(ConfigError, match="rtn-w4 appears twice"):
        validate(cfg)
    cfg["quantization"]["schemes"][-1]["name"] = "rtn_g128"
    validate(cfg)


def test_two_grid_points_with_one_hp_id_are_rejected(raw):
    cfg = copy.deepcopy(raw)
    cfg["methods"]["npo_gdr"].append({"params": "lora", "lr": 3.0e-3, "epochs": 10, "alpha": 5,
                                      "beta": "0.1"})
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    for words in ("methods.npo_gdr", "'beta': 0.1", "'beta': '0.1'", "beta=0.1"):
        assert words in message, f"{words!r} missing from: {message}"


def test_the_strict_loader_reads_valid_files_as_pyyaml_does(root):
    from relapse.config import load_yaml

    # Every shipped config, the hub benches (muse, tofu) included: a file added later is read too.
    paths = sorted((root / "config").glob("*.yaml"))
    assert {"config.yaml", "muse.yaml", "tofu.yaml", "llmeraser.yaml"} <= {p.name for p in paths}
    for path in paths:
        assert load_yaml(path) == yaml.safe_load(path.read_text()), path.name


def test_a_key_repeated_in_different_mappings_is_fine(tmp_path):
    from relapse.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("a: {lr: 1}\nb: {lr: 2}\nc: [{x: 1}, {x: 2}]\n")
    assert load_yaml(path) == {"a": {"lr": 1}, "b": {"lr": 2}, "c": [{"x": 1}, {"x": 2}]}


def test_relearn_heldout_share_is_checked(raw):
    """attacks.relearn.heldout: a share in [0, 1), and a relearned synthetic bench must have two
    forget people to hold one out (else: heldout 0, recovery in-sample, said explicitly)."""
    assert validate(raw)["attacks"]["relearn"]["heldout"] == 0.5
    cfg = copy.deepcopy(raw)
    cfg["attacks"]["relearn"]["heldout"] = 1
    with pytest.raises(ConfigError, match="attacks.relearn.heldout"):
        validate(cfg)
    cfg = copy.deepcopy(raw)
    cfg["benchmarks"]["synthbio"]["corpus"]["people"] = 10         # 10 x 0.1: 1 forget person
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    for word in ("attacks.relearn.heldout", "benchmarks.synthbio.corpus", "heldout: 0"):
        assert word in str(err.value)
    cfg["attacks"]["relearn"]["heldout"] = 0
    validate(cfg)


def test_every_method_accepts_its_own_defaults_and_declares_rules_for_known_names():
    """The rules (relapse.unlearn.hparams) are declared beside the defaults: a rule that refused
    its own default, or one for a name the method does not take, would be a typo there."""
    from relapse.unlearn.hparams import problems
    from relapse.unlearn.registry import get_method, method_names

    for name in method_names():
        method = get_method(name)
        defaults, rules = method.defaults(), method.hparam_rules()
        assert not list(problems(defaults, rules, defaults)), name
        assert set(rules) <= set(defaults), (name, set(rules) - set(defaults))


@pytest.mark.parametrize("rule, good, bad", [
    ("number(gt=0)", [1e-9, 3, 2.5], [0, -1, True, "1", float("nan")]),
    ("number(ge=0, le=100)", [0, 100, 50.5], [-0.1, 100.1]),
    ("integer(ge=1)", [1, 7, 3.0], [0, 1.5, False, "2"]),
    ("choice('cg', 'lissa')", ["cg", "lissa"], ["newton", 1, True]),
    ("FLAG", [True, False], [0, 1, "true"]),
])
def test_hp_rules_accept_and_refuse(rule, good, bad):
    from relapse.unlearn import hparams

    checker = eval(rule, vars(hparams))
    assert all(checker.accepts(v) for v in good), [v for v in good if not checker.accepts(v)]
    assert not any(checker.accepts(v) for v in bad), [v for v in bad if checker.accepts(v)]


def test_a_grid_axis_is_checked_value_by_value(raw):
    """One bad value in a list axis is named, not the list."""
    cfg = copy.deepcopy(raw)
    cfg["methods"] = {"npo": {"lr": 1e-4, "epochs": 1, "beta": [0.1, -0.5]}}
    with pytest.raises(ConfigError, match=r"methods\.npo\.beta: -0\.5 is not allowed for npo; "
                                          r"allowed: a number > 0"):
        validate(cfg)


def test_a_hub_id_is_not_a_local_path():
    from relapse.data.corpora.hub import looks_local

    for hub in ("muse-bench/MUSE-News", "gpt2", "locuslab/TOFU"):
        assert not looks_local(hub), hub
    for path in ("./snap", "../snap", "/data/muse", "~/muse", "data/muse/news", ".snap"):
        assert looks_local(path), path


def test_an_existing_local_snapshot_passes_and_names_the_checked_files(tmp_path, raw):
    """The checks read a healthy hub-layout snapshot as valid (the faults are in
    tests/data/bad_configs/snapshot_*.yaml)."""
    from hub_snapshots import muse_snapshot, tofu_snapshot

    from relapse.data.corpora import get_corpus

    muse = muse_snapshot(tmp_path / "muse", old_names=True)
    get_corpus("muse").check({"kind": "muse", "source": str(muse)})
    for layout in ("configs", "default"):
        tofu = tofu_snapshot(tmp_path / f"tofu-{layout}", layout=layout)
        get_corpus("tofu").check({"kind": "tofu", "forget": "forget10", "source": str(tofu)})


def test_validation_does_not_import_torch(root):
    """`relapse validate` and every Snakefile parse (each job's too) validate the config: the
    registries they read import torch only inside the code that runs a model."""
    import subprocess
    import sys

    paths = [str(root / "config" / n) for n in ("config.yaml", "llmeraser.yaml", "muse.yaml",
                                                "tofu.yaml")]
    code = (f"import sys; from relapse.config import load_config; [load_config(p) for p in "
            f"{paths!r}]; print(sorted(m for m in ('torch', 'transformers', 'peft') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_local_path_must_be_a_folder(tmp_path, raw):
    """A file where a snapshot folder belongs would be taken for a hub id by the data stage."""
    cfg = copy.deepcopy(raw)
    file = tmp_path / "muse.parquet"
    file.write_text("")
    cfg["benchmarks"] = {"b": {"corpus": {"kind": "muse", "source": str(file)},
                               "reference": {"kind": "pretrained", "target": "o/t",
                                             "retrain": "o/r"}}}
    with pytest.raises(ConfigError, match=r"benchmarks\.b\.corpus\.source: .* is a local path "
                                          r"\(it starts with '/'\) that is a file, not a folder"):
        validate(cfg)
