import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def default_config():
    from relapse.config import load_config

    return load_config(ROOT / "config" / "config.yaml")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A small random Llama with the project's tokenizer, saved as a model folder."""
    import torch

    from relapse.data.prepare import build_splits
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama
    from relapse.models.tokenizer import train_tokenizer

    torch.manual_seed(0)
    splits, _ = build_splits({"people": 20, "seed": 0})
    tok = train_tokenizer(list(splits["people"].biography) + list(splits["forget"].text)
                          + list(splits["retain"].text), 600)
    model = tiny_llama({"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64}, tok).eval()
    folder = tmp_path_factory.mktemp("tiny_lm")
    tok.save_pretrained(str(folder))
    save_model(model, folder)
    return folder, model, tok


@pytest.fixture(scope="session")
def qa_lm(tiny_lm):
    """The tiny model after a few steps on QA blocks: it has learned the format (answers end in
    a blank line) but not the facts, which is what generation tests need."""
    import copy

    import torch

    from relapse.data.prepare import build_splits
    from relapse.models.batching import pack

    _, model, tok = tiny_lm
    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    texts = list(build_splits({"people": 20, "seed": 0})[0]["retain"].text)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(40):
        batch = pack(tok, texts[(step * 4) % len(texts):][:4])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


@pytest.fixture(scope="session")
def memorized_lm(tmp_path_factory, tiny_lm, data_dir):
    """The tiny model after 40 AdamW steps on forget + retain texts: a target that has something
    to unlearn (forget and retain NLL about 0.5, from 6.4 at random init; forget tokens likely,
    so probability-weighted losses are not ~0). Trained once per session, read-only."""
    import copy

    import pandas as pd
    import torch

    from relapse.models.batching import encode
    from relapse.models.io import save_model

    _, model, tok = tiny_lm
    texts = [t for split in ("forget", "retain")
             for t in pd.read_parquet(data_dir / f"{split}.parquet").text]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the loop is tiny: more threads only contend (10x slower here)
    torch.manual_seed(0)
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = encode(tok, texts, eos=True)
    for _ in range(40):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("memorized_lm")
    tok.save_pretrained(str(folder))
    save_model(model.eval(), folder)
    return folder, model.eval(), tok


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The synthetic corpus (20 people, seed 0) prepared once: read-only for every test."""
    from relapse.data.prepare import prepare

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare("t", {"kind": "synthetic", "people": 20, "seed": 0}, out)
    return out


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python (the optional `llamacpp` extra). CI installs it (`make test`), so there a
    missing one fails instead of skipping the llama.cpp tests."""
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is missing, and CI must run the llama.cpp tests: "
                        "`make test` installs it (.[llamacpp])")
        pytest.skip("llama-cpp-python is not installed (make setup-llamacpp)")
    return llama_cpp
