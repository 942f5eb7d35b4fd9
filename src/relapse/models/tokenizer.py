"""A byte-level BPE tokenizer trained here, whose pre-tokenizer keeps MUSE's prompt format.

Each pre-token is a word or a punctuation run *with its trailing space*, and every other
whitespace character (notably "\n") is a token of its own. So the MUSE prompt
"...\nAnswer: " tokenizes exactly as the training text "...\nAnswer: Paris" up to the answer,
and the stop strings "\n\n" / "Question" survive decoding byte for byte. (A whitespace word-level
tokenizer turns "Question:" into [UNK] and drops "\n": measured, see DESIGN §5.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
PRETOKEN_PATTERN = r"\w+ ?|[^\w\s]+ ?|\s"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train on `texts`; return a transformers fast tokenizer that prepends BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [SPECIAL["pad"], SPECIAL["bos"], SPECIAL["eos"], SPECIAL["unk"]]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tok.token_to_id(SPECIAL["bos"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A", pair=f"{SPECIAL['bos']} $A $B",
        special_tokens=[(SPECIAL["bos"], bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"], padding_side="right",
        clean_up_tokenization_spaces=False)


def load_tokenizer(path: str | Path):
    """The tokenizer of a model folder. One without a pad token (Llama's, MUSE's targets) pads
    with its EOS (or UNK), as MUSE does: a new token would need an embedding row the weights do
    not have, and padding never reaches a loss or a score (the attention mask hides it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.pad_token is None:
        pad = tokenizer.eos_token or tokenizer.unk_token
        if pad is None:
            raise ValueError(f"{path}: the tokenizer has no pad token, and no eos or unk token "
                             "to pad with; add a pad_token to its tokenizer_config.json")
        tokenizer.pad_token = pad
    return tokenizer
