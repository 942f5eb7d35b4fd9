"""Prompt templates: how a question is put to the reference models, by name (`reference.template`).

A template is a property of the models: it must be the format they were fine-tuned in, or every
number is measured under a prompt the models never saw. Every place that formats a question
uses the bench's template: the QA texts of the unlearning and relearning data (relapse.data.
corpora.tofu), KnowMem (relapse.evaluate.metrics.knowmem), TOFU's metrics, the world-fact probe
(relapse.models.world) and the LLMEraser edits (relapse.data.edits).

  qa           "Question: {q}\\nAnswer: {a}" (MUSE's KnowMem prompt; the format the synthetic
               corpus trains the tiny models in; TOFU's phi-1.5 models). The default.
  llama2-chat  "[INST] {q} [/INST]{a}" (TOFU's llama2-7b tags, config/model_config.yaml:
               question_start_tag "[INST] ", question_end_tag " [/INST]", answer_tag ""): what
               open-unlearning's tofu_Llama-2-7b-chat-hf_* models were fine-tuned on.
  chat         the tokenizer's own chat template (`apply_chat_template`), a user turn and the
               generation prompt; needs the tokenizer.

Few-shot prompts (KnowMem's in-context examples): `qa` writes each example as MUSE does,
"Question: {q}\\nAnswer: {a}\\n\\n". `llama2-chat` writes each as a finished turn, "[INST] {q}
[/INST]{a} ", as open-unlearning's non-chat-template path does (user_start + q + user_end +
asst_start + a + asst_end, asst_end " " for Llama-2); `chat` as earlier user/assistant messages of
one conversation, as open-unlearning's chat-template path does. TOFU itself evaluates zero-shot
(config/tofu.yaml: knowmem shots 0).

The answer of a training text directly follows `prompt(q)` (`text = prompt + answer`): TOFU's
construction (question_start_tag + q + question_end_tag + answer_tag + a). The loss covers the
answer tokens, with EOS appended (relapse.models.batching.encode with `prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Template:
    """A question format by tags: prompt = user_start + q + user_end + answer_start; a finished
    example = prompt + a + turn_end. `stops` end a greedy answer (the start of another turn)."""
    name: str
    user_start: str
    user_end: str
    answer_start: str
    turn_end: str
    stops: tuple[str, ...]

    def prompt(self, question: str, tokenizer=None) -> str:
        return self.user_start + question + self.user_end + self.answer_start

    def example(self, question: str, answer: str, tokenizer=None) -> str:
        return self.prompt(question) + answer + self.turn_end

    def few_shot(self, examples: Sequence[tuple[str, str]], question: str, tokenizer=None) -> str:
        return "".join(self.example(q, a) for q, a in examples) + self.prompt(question)


class ChatTemplate:
    """The tokenizer's chat template: a conversation of user/assistant messages rendered by
    `apply_chat_template(..., add_generation_prompt=True)`. The rendered text starts with the
    BOS string when the template writes one; the tokenizer adds BOS itself when it encodes, so
    that leading BOS is dropped (one BOS, as when the template tokenizes)."""
    name = "chat"
    stops: tuple[str, ...] = ()     # the end-of-turn token is EOS: generation stops there

    def _render(self, tokenizer, messages, generation_prompt: bool = True) -> str:
        if tokenizer is None:
            raise ValueError("template 'chat' needs the model's tokenizer (apply_chat_template)")
        if not getattr(tokenizer, "chat_template", None):
            others = ", ".join(n for n in TEMPLATES if n != "chat")
            raise ValueError("template 'chat': the tokenizer has no chat template; allowed "
                             f"templates without one: {others}")
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)
        bos = tokenizer.bos_token
        if bos and text.startswith(bos):
            adds_bos = tokenizer("", add_special_tokens=True)["input_ids"][:1] == \
                [tokenizer.bos_token_id]
            if adds_bos:
                text = text[len(bos):]
        return text

    def prompt(self, question: str, tokenizer=None) -> str:
        return self._render(tokenizer, [{"role": "user", "content": question}])

    def example(self, question: str, answer: str, tokenizer=None) -> str:
        return self._render(tokenizer, [{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}], False)

    def few_shot(self, examples: Sequence[tuple[str, str]], question: str, tokenizer=None) -> str:
        messages = []
        for q, a in examples:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return self._render(tokenizer, messages + [{"role": "user", "content": question}])


QA = Template("qa", "Question: ", "\n", "Answer: ", "\n\n", ("\n\n", "\nQuestion", "Question:"))
LLAMA2_CHAT = Template("llama2-chat", "[INST] ", " [/INST]", "", " ", ("[INST]",))
TEMPLATES: dict[str, Template | ChatTemplate] = {
    "qa": QA, "llama2-chat": LLAMA2_CHAT, "chat": ChatTemplate()}
DEFAULT = "qa"

# The `qa` template's, under the names the KnowMem code has always used.
STOPS = QA.stops


def get_template(name: str | None):
    """The template registered as `name` (None: the default, qa)."""
    name = DEFAULT if name is None else name
    if name not in TEMPLATES:
        raise ValueError(f"reference.template: {name!r} is not allowed; allowed: "
                         f"{', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def few_shot_prompt(examples, question: str) -> str:
    """The `qa` template's few-shot prompt (MUSE's KnowMem format)."""
    return QA.few_shot(examples, question)
