"""Train the reference models (target on forget+retain people, retrain on retain people only).

Recipe measured here (DESIGN §5): each epoch, the shuffled QA pairs are cut into blocks of 1 to
`max_block_pairs` pairs written exactly in the few-shot KnowMem format, one block per sequence,
mixed with the biographies. Training on single QA lines gives a model that answers at 0 shots
but drifts at 10 shots; blocks of up to 11 pairs cover every prompt length the evaluation uses.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pandas as pd

from relapse.data.synthetic import ATTRIBUTES, QUESTIONS, qa_text

TRAINED_ROLES = {"target": ("forget", "retain", "retain_eval"), "retrain": ("retain", "retain_eval")}


def epoch_texts(people: pd.DataFrame, rng: random.Random, max_block_pairs: int) -> list[str]:
    pairs = [(QUESTIONS[a].format(name=row.name), str(getattr(row, a)))
             for row in people.itertuples() for a in ATTRIBUTES]
    rng.shuffle(pairs)
    texts = list(people.biography)
    i = 0
    while i < len(pairs):
        size = rng.randint(1, max_block_pairs)
        texts.append(qa_text(pairs[i:i + size]))
        i += size
    rng.shuffle(texts)
    return texts


def qa_accuracy(model, tokenizer, people: pd.DataFrame) -> float:
    from relapse.models.batching import answers_correct

    prompts, answers = [], []
    for row in people.itertuples():
        for a in ATTRIBUTES:
            prompts.append(f"Question: {QUESTIONS[a].format(name=row.name)}\nAnswer: ")
            answers.append(str(getattr(row, a)))
    ok = answers_correct(model, tokenizer, prompts, answers)
    return sum(ok) / len(ok)


def fit_reference(model, tokenizer, trained: pd.DataFrame, monitored: dict[str, pd.DataFrame],
                  ref_cfg: dict, device: str, which: str):
    """The reference training loop (the recipe above) on the model's trainable parameters: every
    weight of a model trained from scratch, or a LoRA adapter on a pretrained base. Returns
    (per-epoch log, last QA accuracy per role, start time)."""
    import torch

    from relapse.models.batching import pack
    from relapse.models.training import TrainingLoop
    from relapse.schedule import lr_schedule

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=ref_cfg.get("lr", 3e-3), weight_decay=0.0)
    batch_size = ref_cfg.get("batch_size", 16)
    max_epochs = ref_cfg.get("max_epochs", 80)
    # An epoch's step count depends on its random block sizes, so every epoch's texts are drawn
    # up front (the same rng stream as drawing them epoch by epoch) and the schedule is sized
    # from the steps that really run: sized from one-pair texts, it planned 3,200 steps on the
    # default where 947 run, and the lr at max_epochs was still 0.82x the peak.
    rng = random.Random(ref_cfg.get("seed", 0))
    epochs = [epoch_texts(trained, rng, ref_cfg.get("max_block_pairs", 11))
              for _ in range(max_epochs)]
    total_steps = sum(math.ceil(len(texts) / batch_size) for texts in epochs)
    # 2% warmup, then cosine to 0 at the end of max_epochs (measured: constant 3e-3 reached 60%
    # QA accuracy at epoch 80, cosine 100%). Stopping early at stop_at ends on a nonzero lr.
    scheduler = lr_schedule(opt, ref_cfg.get("schedule", "cosine"), total_steps, warmup=0.02)
    stop_at = ref_cfg.get("stop_at", 0.99)
    check_every = ref_cfg.get("check_every", 5)
    loop = TrainingLoop(model, trainable, opt, scheduler,
                        grad_clip=ref_cfg.get("grad_clip", 1.0) or None)
    log: list[dict] = []
    losses: list[float] = []
    accuracy: dict[str, float] = {}

    def batches(epoch):
        texts = epochs[epoch - 1]
        losses.clear()
        # Random batches, packed: sorting batches by length to save padding instead made every
        # batch all-biography or all-QA, and the target learned QA far slower per epoch
        # (measured: loss 1.84 vs 0.85 at epoch 10), even with per-token loss weights.
        for b in range(0, len(texts), batch_size):
            yield {k: v.to(device) for k, v in pack(tokenizer, texts[b:b + batch_size]).items()}

    def step(batch, loop):
        loss = model(**batch).loss
        loop.check({"nll": loss})
        loss.backward()
        return loss

    def after_step(epoch, batch, loss, grad_norm):
        losses.append(loss.item())

    def end_epoch(epoch):
        nonlocal accuracy
        row = {"epoch": epoch, "step": loop.step, "loss": sum(losses) / len(losses),
               "seconds": loop.seconds()}
        log.append(row)
        print(f"[reference {which}] epoch {epoch} loss {row['loss']:.4f} "
              f"({row['seconds']:.0f} s)", flush=True)
        if epoch % check_every == 0 or epoch == max_epochs:
            model.eval()
            accuracy = {role: qa_accuracy(model, tokenizer, frame) for role, frame in monitored.items()}
            row.update({f"qa_{role}": acc for role, acc in accuracy.items()})
            print(f"[reference {which}] epoch {epoch} loss {row['loss']:.4f} qa {accuracy}", flush=True)
            return all(acc >= stop_at for acc in accuracy.values())
        return False

    loop.epochs(range(1, len(epochs) + 1), batches, step, after_step, end_epoch)
    model.eval()
    return log, accuracy, loop.start


def _people(data_dir, which: str):
    if which not in TRAINED_ROLES:
        raise ValueError(f"reference model {which!r}: expected target or retrain")
    people = pd.read_parquet(Path(data_dir) / "people.parquet")
    trained = people[people.role.isin(TRAINED_ROLES[which])]
    monitored = {role: people[people.role == role] for role in TRAINED_ROLES[which]}
    return trained, monitored


def train_reference(which: str, data_dir: str | Path, tokenizer_dir: str | Path, ref_cfg: dict,
                    out_dir: str | Path, device: str = "cpu", threads: int = 1) -> None:
    from relapse.io import atomic_dir, write_json, write_parquet
    from relapse.models.io import save_model
    from relapse.models.tiny import tiny_llama
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything

    trained, monitored = _people(data_dir, which)
    seed_everything(ref_cfg.get("seed", 0), threads)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = tiny_llama(ref_cfg.get("arch", {}), tokenizer).to(device)
    log, accuracy, start = fit_reference(model, tokenizer, trained, monitored, ref_cfg, device, which)
    with atomic_dir(out_dir) as tmp:
        save_model(model, tmp, tokenizer_dir)
        write_parquet(tmp / "train_log.parquet", pd.DataFrame(log), provenance(ref_cfg))
        write_json(tmp / "reference_manifest.json", {
            "which": which, "epochs": log[-1]["epoch"], "qa_accuracy": accuracy,
            "seconds": time.time() - start, "trained_roles": list(TRAINED_ROLES[which]),
            "parameters": sum(p.numel() for p in model.parameters()), **provenance(ref_cfg)})


def finetune_reference(which: str, data_dir: str | Path, base_dir: str | Path, ref_cfg: dict,
                       out_dir: str | Path, device: str = "cpu", threads: int = 1) -> None:
    """A reference model on a pretrained base (`reference.kind: gguf`): the base fine-tuned on
    the people of `which` with the same recipe, through a LoRA adapter (`params: lora`, merged
    at the end, so the folder is a plain model) or on every decoder Linear (`params: full`)."""
    from relapse.io import atomic_dir, write_json, write_parquet
    from relapse.models.io import load_model, read_manifest, save_model
    from relapse.models.modules import make_trainable
    from relapse.models.tokenizer import load_tokenizer
    from relapse.provenance import provenance
    from relapse.seeding import seed_everything

    trained, monitored = _people(data_dir, which)
    seed_everything(ref_cfg.get("seed", 0), threads)
    tokenizer = load_tokenizer(base_dir)
    params = ref_cfg.get("params", "lora")
    model = make_trainable(load_model(base_dir, device=device), params, ref_cfg.get("lora", {}))
    log, accuracy, start = fit_reference(model, tokenizer, trained, monitored, ref_cfg, device, which)
    if params == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    with atomic_dir(out_dir) as tmp:
        save_model(model, tmp, base_dir)
        write_parquet(tmp / "train_log.parquet", pd.DataFrame(log), provenance(ref_cfg))
        write_json(tmp / "reference_manifest.json", {
            "which": which, "base": read_manifest(base_dir, "reference_manifest.json"),
            "params": params, "epochs": log[-1]["epoch"], "qa_accuracy": accuracy,
            "seconds": time.time() - start, "trained_roles": list(TRAINED_ROLES[which]),
            "parameters": sum(p.numel() for p in model.parameters()), **provenance(ref_cfg)})


def train_tokenizer_stage(data_dir: str | Path, vocab_size: int, out_dir: str | Path) -> None:
    """The tokenizer sees every person's text, holdout included: vocabulary is not knowledge,
    and a holdout name split into rarer pieces would make membership inference trivially
    separable by tokenization instead of by memorization."""
    from relapse.io import atomic_dir
    from relapse.models.tokenizer import train_tokenizer

    people = pd.read_parquet(Path(data_dir) / "people.parquet")
    texts = list(people.biography)
    for row in people.itertuples():
        texts.append(qa_text([(QUESTIONS[a].format(name=row.name), str(getattr(row, a)))
                              for a in ATTRIBUTES]))
    tokenizer = train_tokenizer(texts, vocab_size)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
