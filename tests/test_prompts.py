"""Prompt templates (relapse.data.prompts): the exact strings, the answer-only loss mask on QA
texts, TOFU's stemmed ROUGE, and the config key `reference.template`."""

import pytest

from relapse.data.prompts import TEMPLATES, get_template

Q, A = "Where was Ann born?", "Paris."


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer whose tokens can be counted by hand: `Whitespace` splits on
    \\w+ and runs of other non-space characters ("[/" is one token), and BOS is prepended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "Question", ":", "Where", "was", "Ann", "born",
             "?", "Answer", "Paris", ".", "[", "[/", "INST", "]"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def test_prompt_strings_written_out():
    assert get_template("qa").prompt(Q) == "Question: Where was Ann born?\nAnswer: "
    # TOFU's llama2-7b tags: "[INST] " + q + " [/INST]" + "" + a
    assert get_template("llama2-chat").prompt(Q) == "[INST] Where was Ann born? [/INST]"
    assert get_template("llama2-chat").prompt(Q) + A == "[INST] Where was Ann born? [/INST]Paris."
    # few-shot: MUSE's blocks for qa; finished turns (open-unlearning's asst_end " ") for llama2
    assert get_template("qa").few_shot([("Q1?", "A1")], "Q2?") == \
        "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
    assert get_template("llama2-chat").few_shot([("Q1?", "A1")], "Q2?") == \
        "[INST] Q1? [/INST]A1 [INST] Q2? [/INST]"
    assert get_template(None).name == "qa"


@pytest.mark.parametrize("name,tokens,masked", [
    # <s> Question : Where was Ann born ? Answer : | Paris . </s>
    ("qa", ["<s>", "Question", ":", "Where", "was", "Ann", "born", "?", "Answer", ":",
            "Paris", ".", "</s>"], 10),
    # <s> [ INST ] Where was Ann born ? [/ INST ] | Paris . </s>
    ("llama2-chat", ["<s>", "[", "INST", "]", "Where", "was", "Ann", "born", "?", "[/", "INST",
                     "]", "Paris", ".", "</s>"], 12),
])
def test_loss_mask_covers_the_answer_and_eos_only(word_tokenizer, name, tokens, masked):
    from relapse.models.batching import encode

    tok = word_tokenizer
    prompt = get_template(name).prompt(Q)
    batch = encode(tok, [prompt + A], eos=True, prompts=[prompt])
    assert tok.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == tokens
    labels = batch["labels"][0].tolist()
    assert labels[:masked] == [-100] * masked
    # the answer "Paris", "." and EOS are the labelled tokens: 3 of them
    assert tok.convert_ids_to_tokens(labels[masked:]) == ["Paris", ".", "</s>"]
    # raw text (no prompts): every token labelled, as before
    plain = encode(tok, [prompt + A], eos=True)
    assert (plain["labels"][0] != -100).all()


def test_mask_in_a_padded_batch(word_tokenizer):
    from relapse.models.batching import encode

    tok = word_tokenizer
    qa, chat = get_template("qa").prompt(Q), get_template("llama2-chat").prompt(Q)
    batch = encode(tok, [qa + A, chat + A], eos=True, prompts=[qa, chat])
    # row 0 is 13 tokens, padded to 15: labelled positions 10, 11, 12 only
    assert [i for i, v in enumerate(batch["labels"][0].tolist()) if v != -100] == [10, 11, 12]
    assert [i for i, v in enumerate(batch["labels"][1].tolist()) if v != -100] == [12, 13, 14]


def test_chat_template_uses_the_tokenizer_and_one_bos(word_tokenizer):
    import copy

    tok = copy.deepcopy(word_tokenizer)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] "
                         "{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}"
                         "[assistant]{% endif %}")
    chat = get_template("chat")
    # the tokenizer adds BOS itself, so the template's leading "<s>" string is dropped
    assert chat.prompt(Q, tok) == "[user] Where was Ann born? [assistant]"
    assert chat.few_shot([("Q1?", "A1")], "Q2?", tok) == \
        "[user] Q1? [assistant] A1 [user] Q2? [assistant]"
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        chat.prompt(Q)


def test_tofu_rouge_stems_and_muse_does_not():
    from rouge_score import rouge_scorer

    from relapse.evaluate.metrics import tofu  # noqa: F401  (the metric uses rouge_l_stemmed)
    from relapse.evaluate.rouge import rouge_l, rouge_l_stemmed

    ref, pred = "she was running home", "she runs home"
    stemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"]
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(ref, pred)["rougeL"]
    # by hand: stemmed, the LCS is "she run home" (3 of 4 reference words): recall 3/4;
    # unstemmed "she home": 2/4
    assert stemmed.recall == pytest.approx(3 / 4) and plain.recall == pytest.approx(2 / 4)
    assert rouge_l_stemmed(ref, pred)[1] == pytest.approx(stemmed.recall)
    assert rouge_l(ref, pred)[1] == pytest.approx(plain.recall)


def test_tofu_metric_stems_and_knowmem_does_not(tmp_path, tiny_lm, monkeypatch):
    """Every answer of the snapshot is "<split> answer <i>"; the model "says" "<split>s
    answers <i>". Stemmed, all 3 reference words match (recall 1); unstemmed only "<i>" (1/3,
    and F1 = 1/3 as the output has 3 words too)."""
    import re

    from relapse.evaluate.metrics import knowmem, tofu
    from relapse.evaluate.stage import EvalContext
    import relapse.models.generation as generation

    def inflect(prompt):
        split, i = re.search(r"What is (\w+) (\d+)\?", prompt.split("[INST]")[-1]).groups()
        return f"{split}s answers {i}"

    def fake_generate(model, tokenizer, prompts, max_new, batch, stop_strings=()):
        return [inflect(p) for p in prompts]

    monkeypatch.setattr(knowmem, "greedy_generate", fake_generate)
    monkeypatch.setattr(generation, "greedy_generate", fake_generate)
    _, model, tok = tiny_lm
    cfg = {"knowmem": {"shots": 0, "max_items": 3}, "tofu": {"max_items": 3},
           "scoring": {"batch_size": 8}}
    ctx = EvalContext(model, tok, _tofu_data(tmp_path, "llama2-chat"), cfg, 8,
                      template="llama2-chat")
    rouge = {r.split: r.scores for r in tofu.tofu(ctx) if r.metric == "tofu_rouge"}
    assert rouge["forget"] == [1.0, 1.0, 1.0] and rouge["world_facts"] == [1.0, 1.0, 1.0]
    muse = {r.split: r.scores for r in knowmem.knowmem(ctx) if r.metric == "knowmem"}
    assert muse["forget"] == pytest.approx([1 / 3] * 3)


def test_config_rejects_an_unknown_template(default_config, tmp_path):
    import copy

    from relapse.config import ConfigError, validate

    raw = copy.deepcopy(default_config)
    bench = next(iter(raw["benchmarks"]))
    raw["benchmarks"][bench]["reference"]["template"] = "alpaca"
    with pytest.raises(ConfigError, match=r"template: 'alpaca' is not allowed; allowed: "
                                          r"qa, llama2-chat, chat"):
        validate(raw)


def test_config_template_names_are_the_registry():
    import yaml

    from relapse.config import SCHEMA_PATH

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    ref = schema["properties"]["benchmarks"]["additionalProperties"]["properties"]["reference"]
    assert ref["properties"]["template"]["enum"] == list(TEMPLATES)


def test_config_keeps_qa_for_models_trained_here(default_config):
    import copy

    from relapse.config import ConfigError, validate

    raw = copy.deepcopy(default_config)
    bench = next(b for b, e in raw["benchmarks"].items() if "base" not in e)
    raw["benchmarks"][bench]["reference"]["template"] = "llama2-chat"
    with pytest.raises(ConfigError, match="allowed: qa"):
        validate(raw)


def test_tofu_config_uses_the_llama2_chat_format(root):
    from relapse.config import load_config

    cfg = load_config(root / "config" / "tofu.yaml")
    assert cfg["benchmarks"]["tofu"]["reference"]["template"] == "llama2-chat"


def _tofu_data(tmp_path, template):
    from hub_snapshots import tofu_snapshot
    from relapse.data.prepare import prepare

    source = tofu_snapshot(tmp_path / "TOFU")
    out = tmp_path / f"data-{template}"
    prepare("tofu", {"kind": "tofu", "forget": "forget10", "source": str(source)}, out,
            template=template)
    return out


def test_tofu_data_is_written_in_the_template(tmp_path):
    import pandas as pd

    from relapse.data.prepare import data_template

    out = _tofu_data(tmp_path, "llama2-chat")
    assert data_template(out) == "llama2-chat"
    forget = pd.read_parquet(out / "forget.parquet")
    assert forget.text[0] == "[INST] What is forget 0? [/INST]forget answer 0"
    assert forget.prompt[0] == "[INST] What is forget 0? [/INST]"
    assert pd.read_parquet(out / "verbmem_forget.parquet").prompt[0] == \
        "[INST] What is forget 0? [/INST]"
    holdout = pd.read_parquet(out / "holdout.parquet")
    assert holdout.text[1].startswith(holdout.prompt[1]) and holdout.text[1] != holdout.prompt[1]
    # the default: today's format, the same texts as before templates
    qa = pd.read_parquet(_tofu_data(tmp_path, None) / "forget.parquet")
    assert qa.text[0] == "Question: What is forget 0?\nAnswer: forget answer 0"


def test_raw_text_data_has_no_prompts(tmp_path):
    import pandas as pd

    from relapse.data.prepare import data_template, prepare

    prepare("synthbio", {"people": 10, "forget": 0.2, "holdout": 0.2, "seed": 0}, tmp_path / "d")
    for split in ("forget", "retain", "relearn_forget", "relearn_holdout"):
        assert "prompt" not in pd.read_parquet(tmp_path / "d" / f"{split}.parquet")
    assert data_template(tmp_path / "d") == "qa"


def test_metrics_ask_in_the_datas_template(tmp_path, tiny_lm, monkeypatch):
    """KnowMem (zero-shot and few-shot) and TOFU's metric put every question in the template,
    and stop at its stops."""
    from relapse.evaluate.metrics import knowmem, tofu
    from relapse.evaluate.stage import EvalContext
    import relapse.models.generation as generation

    asked = []

    def fake_generate(model, tokenizer, prompts, max_new, batch, stop_strings=()):
        asked.append((list(prompts), tuple(stop_strings)))
        return ["x" for _ in prompts]

    monkeypatch.setattr(knowmem, "greedy_generate", fake_generate)
    monkeypatch.setattr(generation, "greedy_generate", fake_generate)
    out = _tofu_data(tmp_path, "llama2-chat")
    _, model, tok = tiny_lm
    cfg = {"knowmem": {"shots": 1, "max_items": 2}, "tofu": {"max_items": 2},
           "scoring": {"batch_size": 8}}
    ctx = EvalContext(model, tok, out, cfg, 8, template="llama2-chat")
    knowmem.knowmem(ctx)
    prompts, stops = asked[0]
    assert stops == ("[INST]",)
    assert prompts[0] == ("[INST] What is retain 350? [/INST]retain answer 350 "
                          "[INST] What is forget 0? [/INST]")
    asked.clear()
    tofu.tofu(ctx)
    prompts, stops = asked[0]
    assert prompts == ["[INST] What is forget 0? [/INST]", "[INST] What is forget 1? [/INST]"]


def test_unlearning_on_qa_data_trains_the_answers_only(tmp_path, tiny_lm):
    """The first step's forget term of GA is −NLL over the answer tokens and EOS of every
    forget text at θ0 (one batch holds them all), computed here with HF's own loss on labels
    masked by hand: the prompt's tokens counted from the prompt alone."""
    import pandas as pd
    import torch

    from relapse.unlearn.trainer import unlearn

    folder, model, tok = tiny_lm
    out = _tofu_data(tmp_path, "llama2-chat")
    forget = pd.read_parquet(out / "forget.parquet")
    unlearn("ga", {"lr": 1e-4, "epochs": 1, "params": "full"}, 0, folder, out,
            {"batch_size": 64}, tmp_path / "run")
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    nll_sum, count = 0.0, 0
    for prompt, text in zip(forget.prompt, forget.text):
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        n_prompt = len(tok(prompt)["input_ids"])
        assert tok(prompt)["input_ids"] == ids[:n_prompt]   # the prompt is a prefix here
        labels = torch.tensor([[-100] * n_prompt + ids[n_prompt:]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        nll_sum += loss * (len(ids) - n_prompt)
        count += len(ids) - n_prompt
    assert log.forget[0] == pytest.approx(-nll_sum / count, rel=1e-5)


def test_relearning_on_qa_data_trains_the_answers_only(tmp_path, tiny_lm):
    """The relearning attack's first-step loss on TOFU forget texts is the NLL of their answers
    and EOS at the cell (all sampled texts in one batch), computed here with labels masked by
    hand."""
    import pandas as pd
    import torch

    from relapse.attacks.kinds.relearn import attack_texts
    from relapse.attacks.stage import run_attack

    folder, model, tok = tiny_lm
    out = _tofu_data(tmp_path, "llama2-chat")
    run_attack("relearn", folder, tmp_path / "relearn", out,
               {"steps": [1], "data": ["forget"], "params": "full", "samples": 4,
                "batch_size": 4, "lr": 1e-3}, lora={})
    log = pd.read_parquet(tmp_path / "relearn" / "relearn_log.parquet")
    forget = pd.read_parquet(out / "forget.parquet")
    prompt_of = dict(zip(forget.text, forget.prompt))
    nll_sum, count = 0.0, 0
    for text in attack_texts(out, "forget", 4, 0):
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        n_prompt = len(tok(prompt_of[text])["input_ids"])
        labels = torch.tensor([[-100] * n_prompt + ids[n_prompt:]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        nll_sum += loss * (len(ids) - n_prompt)
        count += len(ids) - n_prompt
    assert log.loss[0] == pytest.approx(nll_sum / count, rel=1e-5)


def test_every_metrics_row_records_the_template(tmp_path, tiny_lm):
    import pandas as pd

    from relapse.data.prepare import prepare
    from relapse.evaluate.stage import evaluate_model

    folder, _, _ = tiny_lm
    keys = {"bench": "t", "method": "target", "hp": "default", "params": "none", "seed": 0,
            "quant": "none-w16", "quant_scheme": "none", "bits": 16}
    cfg = {"metrics": ["knowmem", "verbmem"], "batch_size": 8, "bootstrap": {"samples": 0},
           "knowmem": {"shots": 0, "max_new_tokens": 2, "max_items": 2},
           "verbmem": {"max_new_tokens": 2, "max_items": 2}}
    prepare("s", {"kind": "synthetic", "people": 10, "forget": 0.2, "holdout": 0.2, "seed": 0},
            tmp_path / "synthetic")
    for data, template in ((_tofu_data(tmp_path, "llama2-chat"), "llama2-chat"),
                           (tmp_path / "synthetic", "qa")):
        out = tmp_path / f"{template}.parquet"
        evaluate_model(folder, data, keys, cfg, out, tmp_path / f"{template}-s.parquet")
        rows = pd.read_parquet(out)
        assert len(rows) and (rows.template == template).all()
