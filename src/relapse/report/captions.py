"""Caption text shared by the Markdown, LaTeX and CSV tables: what each number is, how the hp was
selected, which loss variant and which quantizer settings produced it."""

from __future__ import annotations

from relapse.report.measures import RETAINABLE
from relapse.report.selection import rule_text

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


def _context(cfg: dict) -> str:
    variant = cfg.get("unlearning", {}).get("loss_variant", "paper")
    return (f"Loss variant: {variant}. Quantizers: {quantizers_text(cfg)}. "
            "Means over seeds; ROUGE-L F1 x100.")


WORLD_TEXT = ("KnowMem_world: the same few-shot QA on real-world facts that the pretrained base "
              "answered at the data stage (higher is better; utility that neither the fact "
              "injection nor the unlearning targets). ")


def main_caption(cfg: dict, world: bool = False) -> str:
    return ("Unlearning under quantization, each method at its selected hp, with the target "
            "and retrain models. M1 VerbMem_f and M2 KnowMem_f (lower is better), M3 PrivLeak "
            "(Min-K% AUC relative to the retrain model at the same quant, %, 0 is best), M4 "
            "KnowMem_r (higher is better). " + (WORLD_TEXT if world else "")
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
