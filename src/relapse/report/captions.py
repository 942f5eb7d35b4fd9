"""Caption text shared by the Markdown, LaTeX and CSV tables: what each number is, how the hp was
selected, which loss variant and which quantizer settings produced it."""

from __future__ import annotations

from relapse.report.intervals import METHOD_TEXT
from relapse.report.measures import RETAINABLE
from relapse.report.selection import rule_text

# The tables print means; their CSVs carry each one's interval.
INTERVALS_TEXT = f"The CSV holds each number's 95% CI (columns ending lo, hi): {METHOD_TEXT}."

RETAINED_DEFINITION = ("Knowledge retained = metric(unlearned, q) / metric(target, q) x 100 at "
                       "matched quantization q (same bench, same quant)")


def quantizers_text(cfg: dict) -> str:
    """`none; rtn (group_size=64, symmetric=False)` from the config's quantization schemes."""
    parts = []
    for entry in cfg.get("quantization", {}).get("schemes", []):
        name = entry.get("name", entry["scheme"])
        settings = {k: v for k, v in entry.items() if k not in ("scheme", "bits", "name")}
        if entry.get("name") and entry["name"] != entry["scheme"]:
            settings = {"scheme": entry["scheme"], **settings}
        bits = "/".join(str(b) for b in entry.get("bits", []))
        detail = ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, dict))
        parts.append(f"{name} {bits}-bit" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


# MUSE's generation lengths (muse_bench eval.py): a caption says when a run differs.
MUSE_NEW_TOKENS = {"verbmem": 128, "knowmem": 32}
PRIVLEAK_REFERENCE_TEXT = {
    "full": "relative to the full-precision retrain model, as in MUSE",
    "matched": "relative to the retrain model at the same quant",
}


def privleak_references(cfg: dict) -> list[str]:
    """evaluation.privleak.reference as a list, the primary (the tables' PrivLeak) first."""
    ref = cfg.get("evaluation", {}).get("privleak", {}).get("reference", "full")
    return [ref] if isinstance(ref, str) else list(ref)


def privleak_text(cfg: dict) -> str:
    """Which retrain model the tables' PrivLeak compares with, and where the others are."""
    primary, *others = privleak_references(cfg)
    text = PRIVLEAK_REFERENCE_TEXT[primary]
    return text + "".join(f"; vs the {o} reference in metrics.parquet, metric privleak_{o}"
                          for o in others)


def evaluation_text(cfg: dict) -> str:
    """The evaluation protocol in a sentence: dtype, KnowMem shots, generation lengths, and
    whether these are MUSE's."""
    ev = cfg.get("evaluation", {})
    shots = ev.get("knowmem", {}).get("shots", 3)
    new = {m: ev.get(m, {}).get("max_new_tokens", n) for m, n in MUSE_NEW_TOKENS.items()}
    shots_text = ("every ICL example as shots (MUSE's protocol)" if shots == "all" else
                  f"{shots} shots (MUSE uses every ICL example, 10)")
    text = (f"Evaluated in {ev.get('dtype', 'float32')}. KnowMem: {shots_text}, greedy, "
            f"{new['knowmem']} new tokens; VerbMem: {new['verbmem']} new tokens, ground truth "
            f"cut to {new['verbmem']} tokens counted with BOS.")
    if new != MUSE_NEW_TOKENS:
        text += (f" Generation lengths are not MUSE's (VerbMem {MUSE_NEW_TOKENS['verbmem']}, "
                 f"KnowMem {MUSE_NEW_TOKENS['knowmem']} new tokens).")
    return text


def templates_text(cfg: dict) -> str:
    """The prompt template of each bench (`reference.template`, inherited through `base:`)."""
    benches = cfg.get("benchmarks", {})

    def template(name, entry):
        own = entry.get("reference", {}).get("template")
        base = entry.get("base")
        return own or (template(base, benches[base]) if base in benches else "qa")

    found = {name: template(name, entry) for name, entry in benches.items()}
    if len(set(found.values())) <= 1:
        return f"Prompt template: {next(iter(found.values()), 'qa')}."
    return "Prompt templates: " + ", ".join(f"{b} {t}" for b, t in found.items()) + "."


def _context(cfg: dict) -> str:
    variant = cfg.get("unlearning", {}).get("loss_variant", "paper")
    return (f"Loss variant: {variant}. Quantizers: {quantizers_text(cfg)}. "
            "Means over seeds; ROUGE-L F1 x100 (rouge-score without stemming, MUSE's setting; "
            "TOFU's own ROUGE-L recall, metric tofu_rouge, is stemmed, as TOFU's). "
            + templates_text(cfg) + " " + evaluation_text(cfg) + " " + INTERVALS_TEXT)


WORLD_TEXT = ("KnowMem_world: the same few-shot QA on real-world facts that the pretrained base "
              "answered at the data stage (higher is better; utility that neither the fact "
              "injection nor the unlearning targets). ")


def lm_eval_text(cfg: dict) -> str:
    """The WMDP / MMLU columns (metric lm_eval), when the config evaluates them."""
    ev = cfg.get("evaluation", {})
    if "lm_eval" not in ev.get("metrics", []):
        return ""
    lcfg = ev.get("lm_eval", {})
    shots = lcfg.get("num_fewshot")
    items = lcfg.get("max_items")
    return ("WMDP (lower is better: hazardous knowledge) and MMLU (higher is better: general "
            "utility): lm-evaluation-harness multiple-choice accuracy x100 (the choice with the "
            "highest summed log-probability), "
            + ("each task's default shots (0 for WMDP and MMLU)" if shots is None
               else f"{shots} shots")
            + (f", the first {items} items of each task" if items else "") + ". ")


def main_caption(cfg: dict, world: bool = False) -> str:
    return ("Unlearning under quantization, each method at its selected hp, with the target "
            "and retrain models. M1 VerbMem_f and M2 KnowMem_f (lower is better), M3 PrivLeak "
            f"(Min-K% AUC {privleak_text(cfg)}, %, 0 is best), M4 "
            "KnowMem_r (higher is better). " + (WORLD_TEXT if world else "") + lm_eval_text(cfg)
            + rule_text(cfg.get("report", {}).get("selection", {})) + " " + _context(cfg))


def retained_caption(cfg: dict) -> str:
    keys = cfg.get("report", {}).get("retained_metrics", ["knowmem_forget"])
    names = ", ".join(RETAINABLE[k].name for k in keys)
    return (f"{RETAINED_DEFINITION}, for {names}; the retrain model is the floor. "
            "'mean (GDR/KLR)' averages the utility-constrained methods (names with _gdr or _klr). "
            + rule_text(cfg.get("report", {}).get("selection", {})) + " " + _context(cfg))


def grid_caption(cfg: dict, world: bool = False) -> str:
    return ("Every method x hp (appendix): M1-M4 as in the main table"
            + (" (and KnowMem_world)" if world else "") + " and KnowMem_f retained "
            f"(%). {RETAINED_DEFINITION}. " + _context(cfg))
