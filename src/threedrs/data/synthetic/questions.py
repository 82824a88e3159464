"""ScanQA and SQA3D items of a SynthRooms room (FORMATS §3.4, §3.5), answered from the scene graph.

ScanQA asks about the room as a whole (counts, colours, what stands on what, sizes, nearest objects). SQA3D puts
an agent in the room ("I am standing by the bed facing the desk.") and asks questions whose answers depend on its
position and heading. The agent's position is in the ALIGNED frame (z = 0) and its rotation is the yaw-only
quaternion whose +x axis is the direction the agent faces; "left" is +90 degrees (counter-clockwise) from it.
"""

from __future__ import annotations

import numpy as np

from threedrs.data.synthetic.catalog import CATEGORIES
from threedrs.data.synthetic.referring import object_name
from threedrs.data.synthetic.relations import Facts, Relation, noun_phrase
from threedrs.data.tasks import SQA3D_QUESTION_TYPES

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
SIDE_MARGIN = 0.4  # metres sideways before something counts as on the agent's left/right
FRONT_MARGIN = 0.3  # metres ahead/behind before something counts as in front/behind
AGENT_CLEARANCE = 0.25  # metres between the agent and any floor object's footprint


def _named(facts: Facts, i: int) -> list[str]:
    o = facts.objects[i]
    return [o.category, f"{o.colour} {o.category}"]


def _scanqa_pool(facts: Facts, rng: np.random.Generator) -> dict[str, list[tuple[str, list[str], list[int]]]]:
    """Candidate (question, answers, object_ids) per question kind."""
    pool: dict[str, list] = {k: [] for k in ("count", "colour", "on_top", "where", "between", "bigger", "closest")}
    for cat in facts.categories:
        ids = facts.of_category(cat)
        pool["count"].append((f"How many {CATEGORIES[cat].plural} are in the room?", [NUMBER_WORDS[len(ids)]], ids))
    names = facts.nameable()
    for t in range(len(facts.objects)):
        o = facts.objects[t]
        queries = [q for q in facts.identifying(t) if q.colour is None]
        if queries:
            q = queries[int(rng.integers(len(queries)))]
            mod = "" if q.relation is None else " " + facts.modifier(q.relation)
            anchors = list(q.relation.anchors) if q.relation else []
            pool["colour"].append((f"What color is the {noun_phrase(q)}{mod}?", [o.colour], [t, *anchors]))
        if o.support is not None and t in names:
            s = facts.objects[o.support].category
            pool["where"].append((f"Where is {facts.anchor(t)}?", [f"on top of the {s}", f"on the {s}", f"on {s}"],
                                  [t, o.support]))
    for s in names:
        tops = [p.object_id for p in facts.objects if p.support == s]
        if tops:
            cats = sorted(facts.objects[i].category for i in tops)
            answers = _named(facts, tops[0]) if len(tops) == 1 else [" and ".join(cats)]
            pool["on_top"].append((f"What is on top of {facts.anchor(s)}?", answers, [*tops, s]))
        point = facts.centres[s]
        others = [i for i in range(len(facts.objects)) if i != s and facts.objects[i].support != s
                  and facts.objects[s].support != i]
        if len(others) >= 2:
            dist = np.array([facts.distance(i, point) for i in others])
            order = np.argsort(dist)
            if dist[order[1]] - dist[order[0]] >= 0.3:
                x = others[int(order[0])]
                pool["closest"].append((f"What is the closest object to {facts.anchor(s)}?", _named(facts, x),
                                        [x, s]))
    for a, b in [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]:
        between = [i for i in range(len(facts.objects)) if facts.holds(i, Relation("between", (a, b)))]
        if len(between) == 1:
            pool["between"].append((f"What is between {facts.anchor(a)} and {facts.anchor(b)}?",
                                    _named(facts, between[0]), [between[0], a, b]))
        va, vb = facts.objects[a].volume, facts.objects[b].volume
        if facts.objects[a].category != facts.objects[b].category and max(va, vb) >= 1.5 * min(va, vb):
            big = a if va > vb else b
            pool["bigger"].append((f"Which is bigger, {facts.anchor(a)} or {facts.anchor(b)}?",
                                   [noun_phrase(facts.unique_np(big)), facts.objects[big].category], [a, b]))
    return pool


def _draw(pool: dict[str, list], budget: int, rng: np.random.Generator) -> list:
    """Up to `budget` items, cycling over the kinds in random order so every kind is represented."""
    lists = {k: [v[i] for i in rng.permutation(len(v))] for k, v in pool.items() if v}
    kinds = [k for k in pool if k in lists]
    out: list = []
    while len(out) < budget and any(lists.values()):
        for k in [kinds[i] for i in rng.permutation(len(kinds))]:
            if lists[k] and len(out) < budget:
                out.append(lists[k].pop())
    return out


def scanqa_records(facts: Facts, split: str, rng: np.random.Generator) -> list[dict]:
    """6-10 ScanQA records of one scene; question_id "<split>-sceneXXXX-<n>"."""
    scene = facts.room.scene_id
    items = _draw(_scanqa_pool(facts, rng), int(rng.integers(6, 11)), rng)
    return [{"answers": answers, "object_ids": ids,
             "object_names": [object_name(facts.objects[i].category) for i in ids], "question": question,
             "question_id": f"{split}-{scene[:9]}-{n}", "scene_id": scene}
            for n, (question, answers, ids) in enumerate(items)]


class Agent:
    """An agent at `position` [2] (aligned xy, metres) facing heading `yaw` (radians from +x towards +y)."""

    def __init__(self, position: np.ndarray, yaw: float):
        self.position, self.yaw = position, yaw
        self.forward = np.array([np.cos(yaw), np.sin(yaw)])
        self.left = np.array([-self.forward[1], self.forward[0]])

    def frame(self, point: np.ndarray) -> tuple[float, float, float]:
        """(forward, left, angle in degrees, + = left) of an aligned point as the agent sees it."""
        rel = point[:2] - self.position
        fwd, lat = float(rel @ self.forward), float(rel @ self.left)
        return fwd, lat, float(np.degrees(np.arctan2(lat, fwd)))


def _place_agent(facts: Facts, rng: np.random.Generator) -> tuple[Agent, int, int] | None:
    """Stand an agent by a nameable floor object, facing another nameable object at least 1 m away."""
    names = facts.nameable()
    floor = [i for i in names if facts.objects[i].support is None]
    size = facts.room.size
    for _ in range(60):
        if not floor:
            return None
        a = floor[int(rng.integers(len(floor)))]
        rect = facts.rects[a]
        normal = np.array(((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))[int(rng.integers(4))])
        centre = (rect[:2] + rect[2:]) / 2
        half = (rect[2:] - rect[:2]) / 2
        pos = centre + normal * (np.abs(normal) @ half + rng.uniform(0.35, 0.8))
        side = 1 - int(np.argmax(np.abs(normal)))
        pos[side] += rng.uniform(-half[side], half[side])
        if (pos < 0.3).any() or (pos > size[:2] - 0.3).any():
            continue
        floor_rects = [facts.rects[o.object_id] for o in facts.objects if o.support is None]
        if any(max(r[0] - pos[0], pos[0] - r[2], r[1] - pos[1], pos[1] - r[3]) < AGENT_CLEARANCE
               for r in floor_rects):
            continue
        targets = [i for i in names if i != a and facts.objects[i].support != a
                   and facts.distance(i, np.append(pos, 0.0)) >= 1.0]
        if not targets:
            continue
        f = targets[int(rng.integers(len(targets)))]
        delta = facts.centres[f, :2] - pos
        yaw = float(np.arctan2(delta[1], delta[0]) + rng.uniform(-0.14, 0.14))
        return Agent(pos, yaw), a, f
    return None


def _situated_pool(facts: Facts, agent: Agent, skip: set[int]) -> dict[str, list[tuple[str, str, list[int]]]]:
    """Candidate (question, answer, object_ids) per SQA3D question type for one situation."""
    pool: dict[str, list] = {k: [] for k in SQA3D_QUESTION_TYPES}
    views = {i: agent.frame(facts.centres[i]) for i in range(len(facts.objects))}
    for i in facts.nameable():
        if i in skip:
            continue
        name = facts.anchor(i)
        fwd, lat, ang = views[i]
        if 25 <= abs(ang) <= 155 and abs(lat) >= SIDE_MARGIN:
            side, flipped = ("left", "right") if lat > 0 else ("right", "left")
            pool["is"].append((f"Is {name} on my left or my right?", side, [i]))
            pool["others"].append((f"If I turn around, will {name} be on my left or my right?", flipped, [i]))
        if abs(ang) > 115 or abs(ang) < 65:
            pool["is"].append((f"Is {name} behind me?", "yes" if abs(ang) > 115 else "no", [i]))
            pool["can"].append((f"Can I see {name} without turning around?", "yes" if abs(ang) < 65 else "no", [i]))
        if 30 <= abs(ang) <= 150:
            pool["which"].append((f"Which way should I turn to face {name}?", "left" if ang > 0 else "right", [i]))
    for cat in facts.categories:
        ids = facts.of_category(cat)
        if all(abs(views[i][0]) >= FRONT_MARGIN for i in ids):
            ahead = [i for i in ids if views[i][0] > 0]
            pool["how"].append((f"How many {CATEGORIES[cat].plural} are in front of me?", NUMBER_WORDS[len(ahead)],
                                ahead))
        if len(ids) >= 2 and all(abs(views[i][1]) >= SIDE_MARGIN for i in ids):
            for side, sign in (("left", 1), ("right", -1)):
                on_side = [i for i in ids if sign * views[i][1] > 0]
                if len(on_side) == 1:
                    pool["what"].append((f"What color is the {cat} on my {side}?", facts.objects[on_side[0]].colour,
                                         on_side))
    for side, sign in (("left", 1), ("right", -1)):
        cand = [i for i in range(len(facts.objects)) if sign * views[i][1] >= SIDE_MARGIN]
        if cand:
            dist = sorted((float(np.hypot(views[i][0], views[i][1])), i) for i in cand)
            if len(dist) == 1 or dist[1][0] - dist[0][0] >= 0.3:
                i = dist[0][1]
                pool["what"].append((f"What is the closest object on my {side}?", facts.objects[i].category, [i]))
    return pool


def sqa3d_items(facts: Facts, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """6-10 SQA3D (question, annotation) records of one scene over 2-3 situations; joined by question_id."""
    room = facts.room
    budget, n_situations = int(rng.integers(6, 11)), int(rng.integers(2, 4))
    questions: list[dict] = []
    annotations: list[dict] = []
    for s in range(n_situations):
        placed = _place_agent(facts, rng)
        if placed is None:
            continue
        agent, a, f = placed
        anchor, facing = facts.anchor(a), facts.anchor(f)
        situation = f"I am standing by {anchor} facing {facing}."
        alternatives = [f"I am next to {anchor} and {facing} is in front of me.",
                        f"I am looking at {facing} while standing near {anchor}."][:int(rng.choice(3, p=[.1, .2, .7]))]
        share = -(-(budget - len(questions)) // (n_situations - s))  # ceil: spread the budget over situations
        for question, answer, _ in _draw(_situated_pool(facts, agent, {a}), share, rng):
            qid = int(f"1{room.index:05d}{len(questions):06d}")
            questions.append({"scene_id": room.scene_id, "situation": situation, "alternative_situation": alternatives,
                              "question": question, "question_id": qid})
            half = agent.yaw / 2
            annotations.append({
                "scene_id": room.scene_id, "question_id": qid,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": 1}],
                "answer_type": "other", "question_type": "N/A",
                "position": {"x": round(float(agent.position[0]), 6), "y": round(float(agent.position[1]), 6),
                             "z": 0},
                "rotation": {"_x": 0, "_y": 0, "_z": round(float(np.sin(half)), 6),
                             "_w": round(float(np.cos(half)), 6)}})
    return questions, annotations

