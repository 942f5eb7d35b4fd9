"""Reference kind: pretrained (relapse.models.pretrained): local folders and hub ids, safetensors
only, trust_remote_code only where set, the target's tokenizer with a pad token."""

import json
import shutil

import pytest

from relapse.config import ConfigError, validate
from relapse.models import pretrained
from relapse.models.pretrained import PretrainedError, fetch_reference


@pytest.fixture()
def folders(tmp_path, tiny_lm):
    """target (tokenizer without a pad token) and retrain (no tokenizer at all) folders."""
    src, model, tok = tiny_lm
    target, retrain = tmp_path / "target", tmp_path / "retrain"
    for folder in (target, retrain):
        folder.mkdir()
        for f in src.glob("*.safetensors"):
            shutil.copy(f, folder / f.name)
        shutil.copy(src / "config.json", folder / "config.json")
    nopad = tok.__class__.from_pretrained(str(src))
    nopad.pad_token = None
    nopad.save_pretrained(str(target))
    return target, retrain


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PretrainedError, match=r"only pickle weights \(pytorch_model.bin\); "
                                              r"relapse loads safetensors only"):
        pretrained.safetensors_files(tmp_path)


def test_pickle_only_folder_fails_at_validation(tmp_path, folders, default_config):
    target, _ = folders
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    cfg = dict(default_config)
    cfg["benchmarks"] = {"b": {"corpus": {"kind": "synthetic"}, "reference": {
        "kind": "pretrained", "target": str(target), "retrain": str(tmp_path / "pickled")}}}
    with pytest.raises(ConfigError, match=r"benchmarks\.b\.reference\.retrain: .*pickled: only "
                                          r"pickle weights"):
        validate(cfg)


def test_fetch_local_gives_target_tokenizer_with_pad(tmp_path, folders):
    from relapse.models.io import load_model
    from relapse.models.tokenizer import load_tokenizer

    target, retrain = folders
    ref = {"kind": "pretrained", "target": str(target), "retrain": str(retrain)}
    manifest = fetch_reference(ref, "retrain", tmp_path / "out")
    tok = load_tokenizer(tmp_path / "out")
    assert tok.pad_token == tok.eos_token == manifest["pad_token_added"] == "</s>"
    assert manifest["tokenizer_from"] == str(target) and manifest["trust_remote_code"] is False
    assert manifest["architecture"] == "LlamaForCausalLM"
    model = load_model(tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert json.loads((tmp_path / "out" / "reference_manifest.json").read_text())["which"] == "retrain"


def test_trust_remote_code_only_where_set(tmp_path, folders, monkeypatch):
    import transformers

    target, retrain = folders
    (target / "modeling_custom.py").write_text("# remote code\n")
    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    ref = {"kind": "pretrained", "target": str(target), "retrain": str(retrain)}
    fetch_reference(ref, "target", tmp_path / "off")
    assert seen and set(seen) == {False}
    assert not (tmp_path / "off" / "modeling_custom.py").exists()
    seen.clear()
    fetch_reference({**ref, "trust_remote_code": True}, "target", tmp_path / "on")
    assert set(seen) == {True}
    assert (tmp_path / "on" / "modeling_custom.py").exists()


def test_hub_id_downloads_safetensors_at_revision(tmp_path, folders, monkeypatch):
    import huggingface_hub

    target, retrain = folders
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(target if repo_id.endswith("_target") else retrain)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    ref = {"kind": "pretrained", "target": "muse-bench/MUSE-News_target",
           "retrain": "muse-bench/MUSE-News_retrain",
           "revision": {"target": "abc123", "retrain": "def456"}}
    manifest = fetch_reference(ref, "retrain", tmp_path / "out")
    assert [(c[0], c[1]) for c in calls] == [("muse-bench/MUSE-News_retrain", "def456"),
                                           ("muse-bench/MUSE-News_target", "abc123")]
    assert all("*.safetensors" in c[2] and not any(p.endswith((".bin", ".py")) for p in c[2])
               for c in calls)
    assert manifest["revision"] == "def456" and manifest["local"] is False


def test_training_dtype():
    assert pretrained.training_dtype({}, "cuda") == "bfloat16"
    assert pretrained.training_dtype({}, "cpu") == "float32"
    assert pretrained.training_dtype({"dtype": "float32"}, "cuda") == "float32"


def test_hub_corpus_needs_pretrained_reference(tmp_path, default_config):
    from hub_snapshots import muse_snapshot

    source = muse_snapshot(tmp_path / "m", drop=("raw", "holdout"))
    cfg = dict(default_config)
    cfg["benchmarks"] = {"news": {"corpus": {"kind": "muse", "source": str(source)},
                                  "reference": {"kind": "train"}}}
    with pytest.raises(ConfigError, match="reference.kind: 'train' with corpus kind muse"):
        validate(cfg)
    cfg["benchmarks"]["news"]["reference"] = {"kind": "pretrained", "target": "a/b",
                                              "retrain": "a/c"}
    # a local snapshot is checked at validation: the missing split is named with what exists
    with pytest.raises(ConfigError, match=r"benchmarks\.news\.corpus: .*config 'raw': no split "
                                          r"'holdout'.*splits there: forget, retain1, retain2"):
        validate(cfg)


def test_a_failed_download_names_the_repo_and_revision(tmp_path, monkeypatch):
    """The hub's own error (here a 404) says neither which reference nor which revision."""
    import huggingface_hub

    from relapse.models.pretrained import PretrainedError

    def failing_download(repo_id, revision=None, allow_patterns=None):
        raise OSError("404 Client Error")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_download)
    ref = {"kind": "pretrained", "target": "muse-bench/MUSE-News_target",
           "retrain": "muse-bench/MUSE-News_retrain", "revision": "abc123"}
    with pytest.raises(PretrainedError, match=r"cannot download 'muse-bench/MUSE-News_target' at "
                                              r"revision abc123 .*404 Client Error"):
        fetch_reference(ref, "target", tmp_path / "out")

