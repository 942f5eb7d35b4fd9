"""DPO, IdkDPO and UNDIAL (objectives/dpo.py, undial.py; pairs from relapse.unlearn.preference):
each loss and its gradient against a hand computation on a bigram toy, the pairs they train on,
exact gradient accumulation, config validation, and a run end to end under LoRA and full weights."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from relapse.unlearn import registry

EPS = float(torch.finfo(torch.float32).eps)
CFG = {"batch_size": 4, "grad_clip": 1.0, "loss_variant": "paper",
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"}}


class Bigram:
    """A 3-word 'model' whose logits at a position are a row of W picked by the input token;
    the frozen reference has W0. Stands in for StepContext (forward / ref_logits)."""
    loss_variant = "paper"

    def __init__(self, w, w0):
        self.w = torch.tensor(w, dtype=torch.float32, requires_grad=True)
        self.w0 = torch.tensor(w0, dtype=torch.float32)

    def forward(self, batch):
        return SimpleNamespace(logits=self.w[batch["input_ids"]])

    def ref_logits(self, batch):
        return self.w0[batch["input_ids"]]


W = np.array([[0.3, -1.2, 0.8], [1.5, 0.1, -0.4], [-0.7, 0.9, 0.2]])
W0 = np.array([[0.1, 0.4, -0.3], [0.6, -0.5, 1.1], [0.2, 0.0, -0.9]])


def log_softmax(row):
    m = max(row)
    return [x - m - math.log(sum(math.exp(y - m) for y in row)) for x in row]


def softmax(row):
    return [math.exp(v) for v in log_softmax(row)]


def _seq(ids, scored_from):
    """input_ids and labels of one sequence whose tokens from `scored_from` on are scored."""
    labels = [-100 if i < scored_from else t for i, t in enumerate(ids)]
    return ids, labels


def _seq_logp_and_grad(w, ids, labels):
    """Σ log p(y_t|y_<t) by hand, and its gradient with respect to W (d log softmax(W[a])[b] /
    dW[a] = e_b − softmax(W[a]))."""
    total, grad = 0.0, np.zeros_like(w)
    for t in range(len(ids) - 1):
        if labels[t + 1] == -100:
            continue
        a, b = ids[t], labels[t + 1]
        total += log_softmax(list(w[a]))[b]
        grad[a] -= np.array(softmax(list(w[a])))
        grad[a][b] += 1.0
    return total, grad


# Two pairs over the toy: (prompt, rejected answer) and (prompt, preferred answer).
REJECTED = [_seq([0, 1, 2], 1), _seq([2, 2, 0], 2)]
PREFERRED = [_seq([0, 2, 1], 1), _seq([2, 2, 1], 2)]
REF_REJECTED, REF_PREFERRED = [-2.0, -0.7], [-1.5, -1.9]


def _pair_batch():
    def stack(seqs, prefix=""):
        return {f"{prefix}input_ids": torch.tensor([s[0] for s in seqs]),
                f"{prefix}attention_mask": torch.ones(len(seqs), 3, dtype=torch.long),
                f"{prefix}labels": torch.tensor([s[1] for s in seqs])}

    return {**stack(REJECTED), **stack(PREFERRED, "preferred_"),
            "ref_seq_logp": torch.tensor(REF_REJECTED),
            "preferred_ref_seq_logp": torch.tensor(REF_PREFERRED)}


def _dpo_by_hand(beta, scale):
    """scale · mean over pairs of −log σ(z), z = β((log π_w − ref_w) − (log π_l − ref_l)), and
    its gradient: dL/dz = −σ(−z)."""
    value, grad = 0.0, np.zeros_like(W)
    for (rej, pref, ref_l, ref_w) in zip(REJECTED, PREFERRED, REF_REJECTED, REF_PREFERRED):
        lp_l, g_l = _seq_logp_and_grad(W, *rej)
        lp_w, g_w = _seq_logp_and_grad(W, *pref)
        z = beta * ((lp_w - ref_w) - (lp_l - ref_l))
        value += math.log1p(math.exp(-z))
        grad += -(1.0 / (1.0 + math.exp(z))) * beta * (g_w - g_l)
    n = len(REJECTED)
    return scale * value / n, scale * grad / n


@pytest.mark.parametrize("name", ["dpo", "idkdpo"])
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_dpo_value_and_gradient_match_a_hand_computation(name, beta):
    objective = registry._methods()[name].forget
    ctx = Bigram(W, W0)
    loss = objective.fn(ctx, _pair_batch(), {"beta": beta})
    loss.backward()
    scale = 1.0 if name == "dpo" else 2.0 / beta      # Rafailov's; open-unlearning's 2/β
    value, grad = _dpo_by_hand(beta, scale)
    assert abs(loss.item() - value) <= 16 * EPS * max(1.0, abs(value))
    tol = 16 * EPS * max(1.0, float(np.abs(grad).max()))
    assert np.abs(ctx.w.grad.numpy() - grad).max() <= tol
    assert np.abs(grad).max() > 1e-3


def test_dpo_is_log_2_at_the_reference():
    """At θ = θ_ref every log-ratio is 0: DPO is log 2, IdkDPO (2/β)·log 2."""
    ctx = Bigram(W, W)
    batch = _pair_batch()
    for key, seqs in (("ref_seq_logp", REJECTED), ("preferred_ref_seq_logp", PREFERRED)):
        batch[key] = torch.tensor([_seq_logp_and_grad(W, *s)[0] for s in seqs],
                                  dtype=torch.float32)
    methods = registry._methods()
    assert methods["dpo"].forget.fn(ctx, batch, {"beta": 0.5}).item() == \
        pytest.approx(math.log(2), rel=1e-6)
    assert methods["idkdpo"].forget.fn(ctx, batch, {"beta": 0.5}).item() == \
        pytest.approx(4 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 10.0])
def test_undial_value_and_gradient_match_a_hand_computation(beta):
    """Mean over labelled tokens of −Σ_v q_v log p_v, q = softmax(W0[a] − β e_b): prompt and
    padding positions (label −100) excluded; gradient (p − q)/N per token at row a."""
    ids = [[0, 1, 2, 1], [2, 0, 1, 0]]
    labels = [[-100, 1, 2, 1], [-100, -100, 1, -100]]     # row 1: a prompt, then padding
    batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    ctx = Bigram(W, W0)
    loss = registry._methods()["undial"].forget.fn(ctx, batch, {"beta": beta})
    loss.backward()
    terms, grad = [], np.zeros_like(W)
    for row, lab in zip(ids, labels):
        for t in range(3):
            if lab[t + 1] == -100:
                continue
            a, b = row[t], lab[t + 1]
            adjusted = list(W0[a])
            adjusted[b] -= beta
            q, p = softmax(adjusted), softmax(list(W[a]))
            terms.append(-sum(qv * lv for qv, lv in zip(q, log_softmax(list(W[a])))))
            grad[a] += np.array(p) - np.array(q)
    value, grad = sum(terms) / len(terms), grad / len(terms)
    assert len(terms) == 4
    assert abs(loss.item() - value) <= 16 * EPS * max(1.0, abs(value))
    assert np.abs(ctx.w.grad.numpy() - grad).max() <= 16 * EPS * max(1.0, np.abs(grad).max())


def test_idk_answers_are_shipped_and_distinct():
    from relapse.unlearn.preference import idk_answers

    answers = idk_answers()
    assert len(answers) >= 40 and len(set(answers)) == len(answers)


def test_raw_text_pairs_split_at_the_prompt_fraction(tiny_lm):
    from relapse.models.batching import training_rows
    from relapse.unlearn.preference import idk_answers, preference_rows

    _, _, tok = tiny_lm
    frame = pd.DataFrame({"text": ["Ada Moor was born in Ashgrove in 1932 and plays the sitar.",
                                   "Bo Lin works as a marine biologist."]})
    rows = training_rows(tok, frame)
    rejected, preferred, info = preference_rows(tok, frame, rows, {"prompt_fraction": 0.5}, 0)
    answers = idk_answers()
    for row, rej, pref in zip(rows, rejected, preferred):
        n = len(row.ids) - 1                                   # EOS not counted
        assert rej.ids == row.ids and rej.masked == int(0.5 * n) >= 1
        assert pref.ids[:rej.masked] == row.ids[:rej.masked] and pref.masked == rej.masked
        assert pref.ids[-1] == tok.eos_token_id
        tail = tok.decode(pref.ids[rej.masked:-1]).strip()
        assert tail in answers
    zero, _, _ = preference_rows(tok, frame, rows, {"prompt_fraction": 0.0}, 0)
    assert [r.masked for r in zero] == [1, 1]                  # BOS only: the whole text
    again = preference_rows(tok, frame, rows, {"prompt_fraction": 0.5}, 0)[1]
    assert again == preferred                                 # the seed fixes the pairing
    assert "prefix" in info["split"]


def test_qa_pairs_keep_the_prompt_and_swap_the_answer(tiny_lm):
    from relapse.models.batching import training_rows
    from relapse.unlearn.preference import idk_answers, preference_rows

    _, _, tok = tiny_lm
    prompts = ["Question: Where was Ada born?\nAnswer: ", "Question: What does Bo do?\nAnswer: "]
    frame = pd.DataFrame({"text": [prompts[0] + "Ashgrove", prompts[1] + "biology"],
                          "prompt": prompts})
    rows = training_rows(tok, frame)
    rejected, preferred, _ = preference_rows(tok, frame, rows, {"prompt_fraction": 0.5}, 3)
    assert rejected == rows                                    # the answer, as the others train
    for prompt, pref in zip(prompts, preferred):
        text = tok.decode(pref.ids[:-1], skip_special_tokens=True)
        assert text.startswith(prompt.strip()) and text[len(prompt):].strip() in idk_answers()
        assert 0 < pref.masked < len(pref.ids) - 1


def test_packed_windows_are_refused(tiny_lm):
    from relapse.unlearn.preference import preference_rows

    _, _, tok = tiny_lm
    frame = pd.DataFrame({"input_ids": [[1, 5, 6]], "text": ["x"]})
    with pytest.raises(ValueError, match="packed token windows"):
        preference_rows(tok, frame, [], {"prompt_fraction": 0.5}, 0)


SHORT_LONG = ["Ada.", "Bo Lin was born in Ashgrove.",
              "Cy Moor " * 12 + "is a native of Harrowgate, born in 1932, and plays the sitar.",
              "Di Vale " * 30 + "works as a marine biologist."]


@pytest.mark.parametrize("method", ["dpo", "idkdpo_gdr", "undial"])
def test_accumulated_gradient_equals_the_full_batch_gradient(tiny_lm, method):
    """Pairs of very different lengths, split 2 + 2, give the gradient of the whole batch."""
    from relapse.models.batching import batch_training_rows, encode, training_rows
    from relapse.models.modules import make_trainable
    from relapse.unlearn.preference import preference_rows
    from relapse.unlearn.step import StepContext, _ref_seq_logprobs, accumulate_step

    _, base, tok = tiny_lm
    spec = registry.get_method(method)
    hp = {**spec.defaults(), "params": "full", "beta": 1.0 if "dpo" in method else 10.0}
    model = make_trainable(copy.deepcopy(base), "full", {})
    reference = copy.deepcopy(base).eval() if spec.needs_reference else None
    ctx = StepContext(model, "paper", reference, seed=0)
    frame = pd.DataFrame({"text": SHORT_LONG})
    rows = training_rows(tok, frame)
    preferred = None
    if spec.forget.needs_preferred:
        rows, preferred, _ = preference_rows(tok, frame, rows, hp, 0)

    def batches(sizes):
        out, start = [], 0
        for size in sizes:
            part = slice(start, start + size)
            batch = batch_training_rows(rows[part], tok.pad_token_id)
            if preferred is not None:
                pref = batch_training_rows(preferred[part], tok.pad_token_id)
                batch.update({f"preferred_{k}": v for k, v in pref.items()})
                # off θ₀ (−0.5), where the DPO margin and its weight σ(−z) are not 1/2
                batch["ref_seq_logp"] = _ref_seq_logprobs(base, [batch]) - 0.5
                batch["preferred_ref_seq_logp"] = _ref_seq_logprobs(base, [pref])
            out.append(batch)
            start += size
        return out

    def retain(sizes):
        texts = ["Emrys Varga " * 20 + "is a puppeteer.", "Gil Rae.", "Fen Orr plays " * 6,
                 "Hal Ng was born in 1990."]
        return [encode(tok, texts[s:s + n], eos=True)
                for s, n in zip([0, sizes[0]] if len(sizes) == 2 else [0], sizes)]

    gradients = []
    for sizes in ([4], [2, 2]):
        model.zero_grad(set_to_none=True)
        accumulate_step(spec, ctx, hp, batches(sizes), retain(sizes) if spec.regularizer else None)
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    whole, split = gradients
    assert whole.keys() == split.keys()
    assert max(float(g.abs().max()) for g in whole.values()) > 1e-4
    # float32 sums in another order: about sqrt(terms)·eps of the scale (test_unlearn.py's bound)
    terms = sum(len(r.ids) for r in rows) + sum(len(r.ids) for r in preferred or [])
    for name in whole:
        atol = 8 * EPS * float(whole[name].abs().max()) * math.sqrt(2 * terms)
        assert float((whole[name] - split[name]).abs().max()) <= atol, name


def _forget_pairs_margin(model, tok, data_dir):
    """Mean over forget pairs of log π(y_w|x) − log π(y_l|x) (the trained model's preference)."""
    from relapse.models.batching import batch_training_rows, training_rows
    from relapse.models.losses import sequence_logprob
    from relapse.unlearn.preference import preference_rows

    frame = pd.read_parquet(data_dir / "forget.parquet")
    rows, preferred, _ = preference_rows(tok, frame, training_rows(tok, frame),
                                         {"prompt_fraction": 0.5}, 0)
    out = []
    with torch.no_grad():
        for seqs in (preferred, rows):
            b = batch_training_rows(seqs, tok.pad_token_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            out.append(sequence_logprob(logits, b["labels"]))
    return float((out[0] - out[1]).mean())


def _forget_nll(model, tok, data_dir):
    from relapse.models.batching import encode

    batch = encode(tok, list(pd.read_parquet(data_dir / "forget.parquet").text), eos=True)
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.fixture(scope="module")
def trained_lm(memorized_lm):
    """conftest.memorized_lm: a target that knows what it is asked to forget."""
    return memorized_lm


@pytest.mark.parametrize("params", ["full", "lora"])
@pytest.mark.parametrize("method", ["dpo_gdr", "idkdpo", "idkdpo_klr_sure", "undial", "undial_gdr"])
def test_each_method_runs_end_to_end(tmp_path, trained_lm, data_dir, method, params):
    """Two epochs on the trained tiny model: DPO's forget pairs come to prefer the idk answer
    (measured: the mean log π(y_w|x) − log π(y_l|x) rises by 7 to 48 nats; SURE's few modules
    the least), UNDIAL raises the forget NLL (measured +0.08 to +0.25). Checked to fail with
    DPO's sign flipped, and with UNDIAL raising the forget token's logit instead of lowering it."""
    import json

    from relapse.models.io import load_model
    from relapse.unlearn.trainer import unlearn

    folder, target, tok = trained_lm
    hp = {"lr": 1e-3 if params == "full" else 1e-2, "epochs": 2, "params": params}
    unlearn(method, hp, 0, folder, data_dir, CFG, tmp_path / "out")
    out = tmp_path / "out" / "epoch2"
    manifest = json.loads((out / "unlearn_manifest.json").read_text())
    log = pd.read_parquet(tmp_path / "out" / "train_log.parquet")
    assert log["loss"].notna().all() and len(log) > 0
    model = load_model(out)
    if method.startswith(("dpo", "idkdpo")):
        assert manifest["preference"]["answers"] == 50
        before = _forget_pairs_margin(target, tok, data_dir)
        assert _forget_pairs_margin(model, tok, data_dir) > before + 0.1
    else:
        assert _forget_nll(model, tok, data_dir) > _forget_nll(target, tok, data_dir) + 0.01


def test_config_validation_checks_the_new_hparams_and_refuses_packed_windows(root):
    from relapse.config import ConfigError, validate

    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for name, hp, words in [
            ("dpo_gdr", {"prompt_fraction": 1.5}, r"dpo_gdr\.prompt_fraction: 1\.5 is not allowed"),
            ("idkdpo", {"beta": 0}, r"idkdpo\.beta: 0 is not allowed.*> 0"),
            ("undial", {"beta": -1.0}, r"undial\.beta: -1\.0 is not allowed.*>= 0")]:
        cfg = copy.deepcopy(raw)
        cfg["methods"] = {name: {"lr": 1e-4, "epochs": 1, **hp}}
        with pytest.raises(ConfigError, match=words):
            validate(cfg)
    cfg = copy.deepcopy(raw)
    cfg["methods"] = {"dpo": {"lr": 1e-4, "epochs": 1, "prompt_fraction": 0.25}}
    cfg["attacks"].pop("hps", None)             # the default's attack slice names its own hps
    assert validate(cfg)["methods"]["dpo"]["prompt_fraction"] == 0.25
    muse = yaml.safe_load((root / "config" / "muse.yaml").read_text())
    muse["methods"] = {"idkdpo_gdr": {"lr": 1e-4, "epochs": 1}}
    with pytest.raises(ConfigError, match=r"methods\.idkdpo_gdr: not with benchmarks\.\w+ "
                                          r"\(corpus kind muse\)"):
        validate(muse)


def test_dpo_on_qa_rows_prefers_the_idk_answer_to_the_question(tmp_path, trained_lm, data_dir):
    """A QA forget split (a `prompt` column, as TOFU's): the pairs share the question prompt,
    and training raises log π(idk|q) − log π(answer|q)."""
    import json
    import shutil

    from relapse.data.prompts import QA
    from relapse.models.io import load_model
    from relapse.unlearn.trainer import unlearn

    folder, target, tok = trained_lm
    qa_dir = tmp_path / "qa"
    shutil.copytree(data_dir, qa_dir)
    facts = pd.read_parquet(data_dir / "knowmem_forget_qa.parquet")
    prompts = [QA.prompt(q) for q in facts.question]
    pd.DataFrame({"text": [p + a for p, a in zip(prompts, facts.answer)],
                  "prompt": prompts}).to_parquet(qa_dir / "forget.parquet")
    hp = {"lr": 1e-3, "epochs": 2, "params": "full"}
    unlearn("dpo", hp, 0, folder, qa_dir, CFG, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "epoch2" / "unlearn_manifest.json").read_text())
    assert manifest["preference"]["split"] == "qa prompt"
    model = load_model(tmp_path / "out" / "epoch2")
    assert _forget_pairs_margin(model, tok, qa_dir) > _forget_pairs_margin(target, tok, qa_dir) + 0.1
