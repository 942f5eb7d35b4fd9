"""TOFU (locuslab/TOFU) onto the data contract (DESIGN §5, §12).

Two hub layouts: one config per subset with split `train` (the current one), and the 2024 one
with config `default` and the subsets as splits. For `forget: forgetXX` (01, 05, 10):

  forgetXX   -> forget (QA texts to unlearn), knowmem_forget_qa, verbmem_forget (question ->
                answer), privleak_forget
  retainYY   -> retain (the regularizer, YY = 100 - XX), knowmem_retain_qa; ICL examples too
  holdoutXX  -> holdout, knowmem_holdout_qa (never trained: a control), privleak_holdout
  retain_perturbed -> retain_eval
  forgetXX_perturbed, {retain,real_authors,world_facts}_perturbed
                 -> tofu_{forget,retain,real_authors,world_facts}_perturbed (question, answer,
                base_answer, perturbed): what TOFU's truth ratio, probability and ROUGE read.
                real_authors and world_facts are the utility sets; their `_perturbed` variants
                hold the same questions with the wrong answers TOFU's metrics need.

Every text is written in the bench's prompt template (relapse.data.prompts; `reference.template`,
the reference models' own format): text = prompt(question) + answer. The QA text splits (forget,
retain, retain_eval, holdout, privleak_*) keep the prompt beside it (column `prompt`), so that the
unlearning and relearning losses cover the answer only (TOFU's training: question tokens
unlabelled, EOS appended).
"""

from __future__ import annotations

import pandas as pd

from relapse.data.corpora import register_corpus
from relapse.data.corpora.base import HubCorpus, with_pid

SOURCE = "locuslab/TOFU"
FORGETS = ("forget01", "forget05", "forget10")
ICL_EXAMPLES = 10
# TOFU: 200 fictitious authors with 20 QA pairs each (dataset card, paper), generated author by
# author, so an author's pairs are consecutive rows; forget01/05/10 are 40 / 200 / 400 rows, 2 / 10
# / 20 authors. TOFU publishes no author column (open-unlearning#47), so the relearning split is
# by row // 20.
QA_PER_AUTHOR = 20
QA = ("question", "answer")
# TOFU's eval_everything: which answer the truth ratio compares the wrong ones with.
PERTURBED = {"forget": "paraphrased_answer", "retain": "paraphrased_answer",
             "real_authors": "answer", "world_facts": "answer"}


def perturbed_subset(name: str, forget: str) -> str:
    """The hub subset of a perturbed set: the forget one is per forget size (forget10_perturbed)."""
    return f"{forget if name == 'forget' else name}_perturbed"


def subsets(forget: str) -> dict[str, str]:
    if forget not in FORGETS:
        raise ValueError(f"corpus.forget: {forget!r} is not allowed for kind tofu; allowed: "
                         f"{', '.join(FORGETS)}")
    pct = int(forget[len("forget"):])
    return {"forget": forget, "retain": f"retain{100 - pct:02d}", "holdout": f"holdout{pct:02d}"}


class Tofu(HubCorpus):
    kind = "tofu"
    renders_qa = True        # build takes the bench's prompt template
    keys = HubCorpus.keys + ("forget",)

    def default_source(self, cfg: dict) -> str:
        return SOURCE

    def wanted(self, cfg: dict, src):
        names = subsets(cfg.get("forget", "forget10"))
        # The 2024 layout: one config, `default`, whose splits are the subsets.
        layout_2024 = names["forget"] not in src.configs() and "default" in src.configs()

        def at(subset, columns):
            return ("default", [subset], columns) if layout_2024 else (subset, ["train"], columns)

        wanted = {role: at(subset, QA) for role, subset in names.items()}
        for name, base in PERTURBED.items():
            wanted[f"{name}_perturbed"] = at(perturbed_subset(name, names["forget"]),
                                             ("question", "answer", base, "perturbed_answer"))
        return wanted

    def build(self, cfg: dict, tokenizer=None, template=None):
        from relapse.data.prompts import get_template

        template = template or get_template(None)
        frames, record = self.load_all(cfg)
        forget, retain, holdout = (frames[k][list(QA)] for k in ("forget", "retain", "holdout"))
        # ICL examples are retain pairs that KnowMem_retain does not ask (the last ones).
        icl = retain.tail(ICL_EXAMPLES).reset_index(drop=True)
        retain_qa = retain.iloc[:max(len(retain) - ICL_EXAMPLES, 0)]
        retain_eval = frames["retain_perturbed"][list(QA)]

        def texts(frame):
            prompts = [template.prompt(q, tokenizer) for q in frame.question]
            return with_pid(pd.DataFrame({"text": [p + a for p, a in zip(prompts, frame.answer)],
                                          "prompt": prompts}))

        splits = {
            "forget": texts(forget), "retain": texts(retain), "retain_eval": texts(retain_eval),
            "holdout": texts(holdout),
            "verbmem_forget": with_pid(pd.DataFrame({
                "prompt": [template.prompt(q, tokenizer) for q in forget.question],
                "gt": list(forget.answer)})),
            "knowmem_forget_qa": with_pid(forget), "knowmem_retain_qa": with_pid(retain_qa),
            "knowmem_holdout_qa": with_pid(holdout),
            "privleak_forget": texts(forget), "privleak_holdout": texts(holdout),
        }
        for split in ("forget", "retain", "holdout"):
            splits[f"knowmem_{split}_qa_icl"] = icl
        for name, base in PERTURBED.items():
            frame = frames[f"{name}_perturbed"]
            splits[f"tofu_{name}_perturbed"] = with_pid(pd.DataFrame({
                "question": frame.question, "answer": frame.answer,
                "base_answer": frame[base],
                "perturbed": [[str(p) for p in ps] for ps in frame.perturbed_answer]}))
        record["subsets"] = subsets(cfg.get("forget", "forget10"))
        record["template"] = template.name
        return splits, record

    def relearn_sources(self, splits):
        """Author of a forget row (pid = its row in the forget subset); none when the subset is
        not whole authors (relapse.data.relearn_split keeps relearning in-sample then)."""
        n = len(splits["knowmem_forget_qa"])
        if n % QA_PER_AUTHOR:
            return None, "author", (f"the forget subset has {n} QA pairs, not whole authors of "
                                    f"{QA_PER_AUTHOR}")
        return (lambda pid: pid // QA_PER_AUTHOR), "author", ""


register_corpus(Tofu())
