from contextlib import contextmanager

import pytest
import torch

from relapse.models.batching import answers_correct, encode, pack
from relapse.models.io import load_model


@contextmanager
def one_thread():
    """Tiny training loops run 20x slower with a second torch thread on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_tokenizer_keeps_the_muse_prompt_format(tiny_lm):
    _, _, tok = tiny_lm
    prompt = "Question: Where was Alden Ashdown born?\nAnswer: "
    full = tok(prompt + "Veloria\n\nQuestion").input_ids
    # the prompt tokenizes exactly as the training text does up to the answer
    assert full[:len(tok(prompt).input_ids)] == tok(prompt).input_ids
    assert tok.decode(full, skip_special_tokens=True) == prompt + "Veloria\n\nQuestion"
    assert full[0] == tok.bos_token_id
    assert tok.unk_token_id not in full


def test_packed_batch_gives_the_padded_batch_loss_and_logits(tiny_lm):
    _, model, tok = tiny_lm
    texts = ["Alden Ashdown was born in Veloria.", "Question: Where?\nAnswer: Tarsk\n\n",
             "Brisa Carrow plays the harp.", "Question: Which?\nAnswer: oboe\n\n" * 6]
    padded, packed = encode(tok, texts, eos=True), pack(tok, texts)
    assert packed["input_ids"].shape[0] < len(texts)          # it did pack
    assert (packed["labels"] != -100).sum() == ((padded["labels"] != -100).sum() - len(texts))
    with torch.no_grad():
        a = model(**padded).loss
        b = model(**packed).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_answers_correct_on_known_right_and_wrong_answers(tiny_lm):
    """Both outcomes on answers known beforehand: the tiny model overfit on two QA lines
    certainly answers each (greedy generation, checked independently, writes the answer and a
    newline), and certainly does not answer the other's answer, nor a prefix of its own."""
    import copy

    _, model, tok = tiny_lm
    qa = [("Question: Where was Alden Ashdown born?\nAnswer: ", "Veloria"),
          ("Question: Which instrument does Brisa Carrow play?\nAnswer: ", "oboe")]
    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    batch = encode(tok, [p + a + "\n" for p, a in qa], eos=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(60):
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for prompt, answer in qa:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).startswith(answer + "\n")
    (p0, a0), (p1, a1) = qa
    # one padded batch mixing prompt lengths and outcomes, then row by row
    prompts, answers = [p0, p1, p0, p1, p0], [a0, a0, a1, a1, a0[:-2]]
    expected = [True, False, False, True, False]
    assert answers_correct(model, tok, prompts, answers) == expected
    assert answers_correct(model, tok, prompts, answers, batch_size=1) == expected


def test_only_safetensors_are_loaded(tmp_path, tiny_lm):
    folder, model, _ = tiny_lm
    model.save_pretrained(str(tmp_path), safe_serialization=False)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(tmp_path)
    assert load_model(folder) is not None


def test_reference_schedule_warms_up_2pct_and_reaches_0_at_the_last_step(tiny_lm, monkeypatch):
    """The cosine is sized from the steps that really run (texts of 1..max_block_pairs pairs),
    not from one-pair texts, which planned 3x the steps and left the lr near its peak."""
    import copy

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import relapse.schedule
    from relapse.data.prepare import build_splits
    from relapse.models.reference import fit_reference

    _, model, tok = tiny_lm
    people = build_splits({"people": 20, "seed": 0})[0]["people"].head(5)
    schedulers = []
    real_schedule = relapse.schedule.lr_schedule
    monkeypatch.setattr(relapse.schedule, "lr_schedule",
                        lambda *a, **k: schedulers.append(real_schedule(*a, **k)) or schedulers[-1])
    lrs = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    peak = 1e-3
    try:
        with one_thread():
            log, _, _ = fit_reference(copy.deepcopy(model), tok, people, {}, {
                "lr": peak, "batch_size": 2, "max_epochs": 20, "max_block_pairs": 11,
                "check_every": 1000, "stop_at": 2.0}, "cpu", "target")
    finally:
        hook.remove()
    steps = len(lrs)
    assert log[-1]["epoch"] == 20 and log[-1]["step"] == steps
    warmup = lrs.index(peak) + 1          # linear warmup: peak * (i + 1) / warmup at step i
    assert warmup == round(0.02 * steps) >= 2, (warmup, steps)
    assert lrs[:warmup] == pytest.approx([peak * (i + 1) / warmup for i in range(warmup)])
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert lrs[-1] < 0.01 * peak                          # the one-pair sizing left ~0.8x peak
    assert schedulers[0].last_epoch == steps
    assert schedulers[0].get_last_lr()[0] == pytest.approx(0.0, abs=1e-12 * peak)


def test_pad_rows_pads_right_or_left():
    from relapse.models.batching import pad_rows

    ids, mask = pad_rows([[5, 6, 7], [8], []], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8], []], 0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="side"):
        pad_rows([[1]], 0, side="middle")


def test_training_loop_runs_each_step_in_one_order():
    """zero_grad, the step function, clipping, optimizer, scheduler, then the hook; an epoch
    hook returning True stops the run."""
    from relapse.models.guard import NonFiniteLoss
    from relapse.models.training import TrainingLoop

    calls = []
    w = torch.nn.Parameter(torch.ones(2))

    class Recorder(torch.optim.SGD):
        def zero_grad(self, set_to_none=True):
            calls.append("zero_grad")
            super().zero_grad(set_to_none=set_to_none)

        def step(self, closure=None):
            calls.append("step")
            return super().step(closure)

    opt = Recorder([w], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: calls.append("scheduler") or 1.0)
    calls.clear()
    loop = TrainingLoop(torch.nn.Linear(1, 1), [w], opt, scheduler, grad_clip=1.0)

    def step(batch, loop):
        calls.append(f"step_fn {batch} at {loop.step}")
        loss = (w * batch).sum()
        loop.check({"loss": loss})
        loss.backward()
        return loss

    loop.epochs(range(1, 4), lambda epoch: [epoch, 10 * epoch], step,
                after_step=lambda epoch, batch, loss, norm: calls.append(f"after {loop.step}"),
                end_epoch=lambda epoch: epoch == 2)
    one = ["zero_grad", "step_fn {} at {}", "step", "scheduler", "after {}"]
    expected = [c.format(b, s) if "step_fn" in c else c.format(s + 1)
                for s, b in enumerate([1, 10, 2, 20]) for c in one]
    assert calls == expected and loop.step == 4
    with pytest.raises(NonFiniteLoss, match="at step 4"):
        loop.run([float("nan")], step)
