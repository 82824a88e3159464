"""ScanRefer, Multi3DRefer and Scan2Cap records of a SynthRooms room (FORMATS §3.1-3.3), from its scene graph.

ScanRefer descriptions denote exactly their target (checked with `Facts.resolve`) and are written as the official
files are, without `eval_type` (readers label them from the label table, `threedrs.data.labels`); Multi3DRefer
descriptions may denote zero, one or several objects and carry the eval type the referent set implies; Scan2Cap's
references are the ScanRefer descriptions of each object. Vocabulary is deliberately small.
"""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np

from threedrs.data.synthetic.catalog import CATEGORIES, COLOURS, SIZES, TEXTURES
from threedrs.data.synthetic.relations import Facts, Query, Relation, article, noun_phrase

def tokenize(text: str) -> list[str]:
    """ScanRefer-style tokens: lower-case words and the punctuation marks . , ? ! as separate tokens."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[.,?!]", text.lower())


def object_name(category: str) -> str:
    """ScanRefer `object_name`: the raw category with spaces replaced by underscores."""
    return category.replace(" ", "_")


def _extra_sentence(facts: Facts, q: Query, target: int, rng: np.random.Generator) -> str:
    """A redundant true sentence about an attribute the query did not use (or "")."""
    o = facts.objects[target]
    unused = [a for a in ("colour", "texture", "size") if getattr(q, a) is None]
    if not unused or rng.random() < 0.5:
        return ""
    attr = unused[int(rng.integers(len(unused)))]
    return f" it is {getattr(o, attr)}."


def scanrefer_text(facts: Facts, q: Query, target: int, rng: np.random.Generator) -> str:
    """One ScanRefer-style description of `q` (which must denote `target`)."""
    np_ = noun_phrase(q)
    a = article(np_)
    rel = q.relation
    if rel is None:
        forms = (f"this is {a} {np_}.", f"the {np_} in the room.", f"the only {np_} in the room.")
    else:
        mod = facts.modifier(rel)
        forms = (f"this is {a} {np_}. {facts.predicate(rel)}.", f"the {np_} {mod}.", f"there is {a} {np_} {mod}.")
    return forms[int(rng.integers(len(forms)))] + _extra_sentence(facts, q, target, rng)


def scanrefer_records(facts: Facts, rng: np.random.Generator) -> list[dict]:
    """6-12 ScanRefer records (without eval_type) of one scene: up to two descriptions per object."""
    scene = facts.room.scene_id
    budget = int(rng.integers(6, 13))
    pools = {}
    for t in rng.permutation(len(facts.objects)).tolist():
        queries = facts.identifying(t)
        if queries:
            pools[t] = queries
    records: list[dict] = []
    for ann in range(2):
        for t, queries in pools.items():
            if len(records) >= budget or not queries:
                continue
            related = [q for q in queries if q.relation is not None]
            pick = related if related and rng.random() < 0.7 else queries
            q = pick[int(rng.integers(len(pick)))]
            queries.remove(q)
            text = scanrefer_text(facts, q, t, rng)
            records.append({"scene_id": scene, "object_id": str(t),
                            "object_name": object_name(facts.objects[t].category), "ann_id": str(ann),
                            "description": text, "token": tokenize(text)})
    return records


def scan2cap_corpus(records: list[dict]) -> dict[str, list[str]]:
    """Scan2Cap references: key "scene|object_id|object_name" -> ["sos <token[:30]> eos", ...] (FORMATS §3.3)."""
    corpus: dict[str, list[str]] = {}
    for r in records:
        key = f"{r['scene_id']}|{r['object_id']}|{r['object_name']}"
        corpus.setdefault(key, []).append("sos " + " ".join(r["token"][:30]) + " eos")
    return corpus


def _random_query(facts: Facts, rng: np.random.Generator, present: bool) -> Query:
    names = facts.categories if present else [c for c in CATEGORIES if c not in facts.categories]
    cat = names[int(rng.integers(len(names)))]
    seen = [facts.objects[i] for i in facts.of_category(cat)]
    kw: dict[str, str] = {}
    if rng.random() < 0.5:
        palette = [o.colour for o in seen] if seen and rng.random() < 0.7 else list(CATEGORIES[cat].colours)
        kw["colour"] = palette[int(rng.integers(len(palette)))]
    if rng.random() < 0.25:
        kw["size"] = SIZES[int(rng.integers(2))]
    if rng.random() < 0.2:
        kw["texture"] = TEXTURES[int(rng.integers(len(TEXTURES)))]
    rel = None
    anchors = facts.nameable()
    if rng.random() < 0.5 and anchors:
        kind = ("on", "left", "right", "next_to", "between", "supports")[int(rng.integers(6))]
        if kind == "supports":
            rel = Relation("supports", category=("lamp", "box", "plant", "tv", "monitor")[int(rng.integers(5))])
        elif kind == "between":
            pairs = list(combinations(anchors, 2))
            rel = Relation("between", pairs[int(rng.integers(len(pairs)))]) if pairs else None
        else:
            rel = Relation(kind, (anchors[int(rng.integers(len(anchors)))],))
    return Query(cat, relation=rel, **kw)


def multi3drefer_eval_type(facts: Facts, q: Query, targets: tuple[int, ...]) -> str:
    """zt/st/mt by the number of targets; _w_d when the scene holds other objects of the described class."""
    if len(targets) >= 2:
        return "mt"
    distractors = len(facts.of_category(q.category)) > len(targets)
    return ("zt" if not targets else "st") + ("_w_d" if distractors else "_wo_d")


def multi3drefer_text(facts: Facts, q: Query, plural: bool, rng: np.random.Generator) -> str:
    np_ = noun_phrase(q, plural=plural)
    mod = "" if q.relation is None else " " + facts.modifier(q.relation, plural)
    if plural:
        forms = (f"the {np_}{mod}.", f"all {np_}{mod}.") if mod else (f"the {np_} in the room.", f"all the {np_}.")
    else:
        forms = (f"the {np_}{mod}.", f"{article(np_)} {np_}{mod}.") if mod else (f"the {np_} in the room.",)
    return forms[int(rng.integers(len(forms)))]


QUOTAS = (("zt_w_d", 1), ("zt_wo_d", 1), ("st_w_d", 2), ("st_wo_d", 1), ("mt", 2))


def multi3drefer_records(facts: Facts, rng: np.random.Generator) -> list[dict]:
    """6-12 Multi3DRefer records of one scene, mixing all five eval types where the scene allows."""
    buckets: dict[str, list[tuple[Query, tuple[int, ...]]]] = {k: [] for k, _ in QUOTAS}
    seen: set[Query] = set()
    for _ in range(250):
        q = _random_query(facts, rng, present=rng.random() < 0.85)
        targets = facts.resolve(q)
        if q in seen or targets is None:
            continue
        seen.add(q)
        buckets[multi3drefer_eval_type(facts, q, targets)].append((q, targets))
    budget = int(rng.integers(6, 13))
    chosen: list[tuple[Query, tuple[int, ...]]] = []
    for kind, quota in QUOTAS:  # the quotas first, then one of each kind in turn
        chosen.extend(buckets[kind][:quota])
        del buckets[kind][:quota]
    while len(chosen) < budget and any(buckets.values()):
        for kind, _ in QUOTAS:
            if buckets[kind] and len(chosen) < budget:
                chosen.append(buckets[kind].pop(0))
    records = []
    for ann_id, (q, targets) in enumerate(chosen[:budget]):
        text = multi3drefer_text(facts, q, len(targets) >= 2, rng)
        words = set(tokenize(text))
        records.append({
            "scene_id": facts.room.scene_id, "object_name": object_name(q.category), "ann_id": ann_id,
            "description": text, "object_ids": list(targets), "eval_type": multi3drefer_eval_type(facts, q, targets),
            "spatial": q.relation is not None, "color": bool(words & set(COLOURS)),
            "texture": bool(words & set(TEXTURES)), "shape": bool(words & set(SIZES)), "token": tokenize(text)})
    return records

