"""Prepare a benchmark's corpus into the MUSE-shaped splits (DESIGN §5), as Parquet + manifest.

Splits (one Parquet file each):
  people                       every person with role and attributes (source of truth)
  forget, retain               documents (biography + the person's QA block) to unlearn / regularize
  retain_eval, holdout         biographies for perplexity
  verbmem_forget               (prompt, gt): a biography cut at a word boundary
  knowmem_{forget,retain,holdout}_qa       (question, answer); holdout is a never-trained control
  knowmem_{forget,retain,holdout}_qa_icl   few-shot examples, from regularizer people
  privleak_{forget,holdout}                texts for membership inference
  relearn_forget, relearn_holdout          the relearning attack's forget data and its control
                                           (documents of the same form as forget)
  knowmem_forget_heldout_qa                QA of the forget people relearn_forget leaves out
                                           (relapse.data.relearn_split)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from relapse.data.relearn_split import DEFAULT_HELDOUT, relearn_splits
from relapse.data.synthetic import ATTRIBUTES, Person, assign_roles, make_people, qa_text
from relapse.io import atomic_dir, write_json
from relapse.provenance import provenance

ICL_EXAMPLES = 10  # the most shots a KnowMem prompt may use (schema caps evaluation shots at 10)


def verbmem_item(person: Person, prompt_fraction: float = 0.5) -> dict:
    """Cut the biography after about `prompt_fraction` of its words. The prompt keeps its
    trailing space, so that it tokenizes exactly as in training."""
    bio = person.biography()
    words = bio.split(" ")
    cut = max(1, int(len(words) * prompt_fraction))
    prompt = " ".join(words[:cut]) + " "
    gt = " ".join(words[cut:])
    facts = [v for v in person.facts().values() if v in gt]
    return {"pid": person.pid, "prompt": prompt, "gt": gt, "facts": facts}


def _documents(people: list[Person]) -> pd.DataFrame:
    rows = []
    for p in people:
        rows.append({"pid": p.pid, "kind": "bio", "text": p.biography()})
        rows.append({"pid": p.pid, "kind": "qa",
                     "text": qa_text([(q, a) for _, q, a in p.qa_pairs()])})
    return pd.DataFrame(rows)


def _qa(people: list[Person]) -> pd.DataFrame:
    return pd.DataFrame([{"pid": p.pid, "attribute": attr, "question": q, "answer": a}
                         for p in people for attr, q, a in p.qa_pairs()])


def _bios(people: list[Person]) -> pd.DataFrame:
    return pd.DataFrame([{"pid": p.pid, "text": p.biography()} for p in people])


def build_splits(corpus: dict) -> tuple[dict[str, pd.DataFrame], dict[str, list[int]]]:
    n, seed = corpus.get("people", 100), corpus.get("seed", 0)
    people = make_people(n, seed)
    roles = assign_roles(n, corpus.get("forget", 0.1), corpus.get("holdout", 0.1),
                         corpus.get("retain_eval", 0.5), seed)
    by_role = {role: [people[i] for i in ids] for role, ids in roles.items()}
    role_of = {pid: role for role, ids in roles.items() for pid in ids}

    people_df = pd.DataFrame([{"pid": p.pid, "name": p.name, "role": role_of[p.pid],
                               "biography": p.biography(), **p.facts()} for p in people])
    rng = random.Random(seed + 2)
    splits = {
        "people": people_df,
        "forget": _documents(by_role["forget"]),
        "retain": _documents(by_role["retain"]),
        "retain_eval": _bios(by_role["retain_eval"]),
        "holdout": _bios(by_role["holdout"]),
        "verbmem_forget": pd.DataFrame([verbmem_item(p) for p in by_role["forget"]]),
        "privleak_forget": _bios(by_role["forget"]),
        "privleak_holdout": _bios(by_role["holdout"]),
    }
    icl_pool = _qa(by_role["retain"])
    for role, split in (("forget", "forget"), ("retain_eval", "retain"), ("holdout", "holdout")):
        splits[f"knowmem_{split}_qa"] = _qa(by_role[role])
        # Distinct few-shot examples per split, one attribute each in turn, deterministic.
        picks = rng.sample(range(len(icl_pool)), ICL_EXAMPLES)
        splits[f"knowmem_{split}_qa_icl"] = icl_pool.iloc[picks][["question", "answer"]] \
            .reset_index(drop=True)
    return splits, roles


def synthetic_relearn_splits(corpus: dict, splits: dict[str, pd.DataFrame],
                              roles: dict[str, list[int]], heldout: float = DEFAULT_HELDOUT
                              ) -> tuple[dict[str, pd.DataFrame], dict]:
    """The relearning splits of the synthetic corpus: forget people split by person, and the
    control as documents of holdout people (biography + QA block, the form of `forget`). Its
    own seeded draw: the other splits are exactly those of build_splits."""
    people = make_people(corpus.get("people", 100), corpus.get("seed", 0))
    control = _documents([people[i] for i in roles["holdout"]])
    return relearn_splits(splits, heldout, corpus.get("seed", 0) + 3, source_of=lambda pid: pid,
                          unit="person", holdout_texts=control)


def require_training_splits(splits: dict, out_dir, source: str) -> None:
    """Unlearning needs forget texts, and its regularizers retain texts: an empty one stops the
    data stage, naming the file it would have written and where the texts came from."""
    for name in ("forget", "retain"):
        if name in splits and len(splits[name]) == 0:
            raise ValueError(f"{Path(out_dir) / (name + '.parquet')}: the {name} split would be "
                             f"empty (0 texts) from the {source}; give it more people or a "
                             "larger fraction, or check the source data")


def prepare(bench: str, corpus: dict, out_dir: str | Path,
            tokenizer_dir: str | Path | None = None,
            extra_splits: Callable[[], dict[str, pd.DataFrame]] | None = None,
            heldout: float = DEFAULT_HELDOUT, template: str | None = None) -> None:
    """Write the splits, and in the manifest the bench's prompt template (`reference.template`,
    relapse.data.prompts: what every later stage formats questions with). `heldout` (config
    attacks.relearn.heldout) is the share of forget people (TOFU: authors) whose facts the
    relearning attack never sees (relapse.data.relearn_split); the manifest's `relearn` record
    says what was done. `extra_splits` (synthetic corpus only) is called once the splits are
    built and checked, and returns more splits to write beside them: the CLI passes the world-fact
    probe of a pretrained base (relapse.models.world: `knowmem_world_qa` + `_icl`, the facts of
    relapse.data.world that the base answers, and `world_check` with every fact's answer).
    Other corpus kinds (muse, tofu: relapse.data.corpora) read their source; `tokenizer_dir`
    is the tokenizer that cuts long texts into training chunks."""
    if corpus.get("kind", "synthetic") != "synthetic":
        prepare_corpus(bench, corpus, out_dir, tokenizer_dir, heldout, template)
        return
    from relapse.data.prompts import get_template

    template = get_template(template).name
    splits, roles = build_splits(corpus)
    require_training_splits(splits, out_dir, f"synthetic corpus {corpus}")
    relearn, record = synthetic_relearn_splits(corpus, splits, roles, heldout)
    splits.update(relearn)
    if extra_splits is not None:
        splits.update(extra_splits())
    with atomic_dir(out_dir) as tmp:
        for name, frame in splits.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "manifest.json", {
            "bench": bench, "corpus": corpus, "template": template,
            "attributes": list(ATTRIBUTES),
            "roles": {k: len(v) for k, v in roles.items()},
            "splits": {name: len(frame) for name, frame in splits.items()},
            "relearn": record, **provenance(corpus),
        })


def prepare_corpus(bench: str, corpus: dict, out_dir: str | Path,
                   tokenizer_dir: str | Path | None = None,
                   heldout: float = DEFAULT_HELDOUT, template: str | None = None) -> None:
    """A registered corpus kind (relapse.data.corpora), with its source, revision and resolved
    files in the manifest and in every split's provenance. A kind whose QA pairs map to their
    source declares `relearn_sources(splits) -> (pid -> source, unit, why not)`; the others
    (MUSE) keep the in-sample relearning protocol. A kind that writes QA texts (`renders_qa`)
    writes them in `template`, formatted with the tokenizer (template chat)."""
    from relapse.data.corpora import get_corpus
    from relapse.data.prompts import get_template
    from relapse.io import write_parquet

    kind = get_corpus(corpus["kind"])
    tokenizer = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    chosen = get_template(template)
    splits, record = kind.build(corpus, tokenizer, template=chosen) \
        if getattr(kind, "renders_qa", False) else kind.build(corpus, tokenizer)
    require_training_splits(splits, out_dir, f"{corpus['kind']} corpus from {record}")
    source_of, unit, why = kind.relearn_sources(splits) if hasattr(kind, "relearn_sources") \
        else (None, "source", f"corpus kind {corpus['kind']}: its QA pairs name no source text")
    relearn, record["relearn"] = relearn_splits(splits, heldout, 0, source_of, unit,
                                                why_in_sample=why)
    splits.update(relearn)
    meta = provenance(corpus, source=record)
    with atomic_dir(out_dir) as tmp:
        for name, frame in splits.items():
            write_parquet(tmp / f"{name}.parquet", frame, meta)
        write_json(tmp / "manifest.json", {
            "bench": bench, "corpus": corpus, "template": chosen.name, "source": record,
            "relearn": record["relearn"],
            "splits": {name: len(frame) for name, frame in splits.items()}, **meta})


def listed_splits(data_dir: str | Path) -> dict[str, int] | None:
    """The splits the data stage wrote (name -> rows), from its manifest; None without one."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.exists():
        return None
    import json

    return json.loads(manifest.read_text()).get("splits", {})


def _missing(data_dir: Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{data_dir / (name + '.parquet')}: split {name!r} is listed in {data_dir}/manifest.json "
        f"but the file is missing: the prepared data is incomplete; delete {data_dir} and rerun "
        "the data stage (Snakemake does not look inside an output folder)")


def has_split(data_dir: str | Path, name: str) -> bool:
    """Whether the prepared data holds split `name`. Decided by the manifest, never by looking
    for the file: a deleted file must stop the stage, not silently drop a metric."""
    data_dir = Path(data_dir)
    listed = listed_splits(data_dir)
    if listed is None:
        return (data_dir / f"{name}.parquet").exists()
    if name not in listed:
        return False
    if not (data_dir / f"{name}.parquet").exists():
        raise _missing(data_dir, name)
    return True
def data_template(data_dir: str | Path) -> str:
    """The prompt template the data folder was written in (its manifest; qa before templates)."""
    from relapse.data.prompts import DEFAULT
    from relapse.io import read_json

    path = Path(data_dir) / "manifest.json"
    return (read_json(path) if path.exists() else {}).get("template", DEFAULT)


def load_split(data_dir: str | Path, name: str) -> pd.DataFrame:
    path = Path(data_dir) / f"{name}.parquet"
    if not path.exists():
        listed = listed_splits(data_dir)
        if listed is not None and name in listed:
            raise _missing(Path(data_dir), name)
        raise FileNotFoundError(f"split {name!r} not found in {data_dir}; run the data stage")
    from relapse.io import read_parquet

    return read_parquet(path)
