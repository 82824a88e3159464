"""Spatial relations over a room's scene graph and the referring expressions built from them.

All geometry is in the aligned frame. "Left" and "right" are as seen by a viewer FACING THE WINDOW WALL (the
room's landmark): `right = facing x up`. A Query names a category, optional attributes and an optional relation;
`Facts.resolve` returns the objects it denotes, so every description's referent set is computed, never assumed.

Relations (margins keep the answers unambiguous):
- on(A): stands on A.            - supports(c): has an object of category c on top.
- left(A) / right(A): centre at least LATERAL_MARGIN further left/right than A's (neither stands on the other).
- next_to(A): footprints at most NEXT_TO apart.   - between(A, B): centre projects inside segment A-B.
- closest(A) / farthest(A), window_closest / window_farthest: superlatives over the candidates, refused (None)
  when the runner-up is within SUPERLATIVE_MARGIN.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from threedrs.data.synthetic.catalog import CATEGORIES
from threedrs.data.synthetic.rooms import Room

LATERAL_MARGIN = 0.3  # metres
NEXT_TO = 0.5  # metres between footprints
SUPERLATIVE_MARGIN = 0.3  # metres
BETWEEN_OFFSET = 0.6  # metres from the segment
SIDE_FACING = ((-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))  # viewer direction when facing wall 0..3
SUPERLATIVES = ("closest", "farthest", "window_closest", "window_farthest")
_ATTR_SETS = ((), ("colour",), ("size",), ("texture",), ("size", "colour"), ("colour", "texture"),
              ("size", "texture"), ("size", "colour", "texture"))


@dataclass(frozen=True)
class Relation:
    kind: str  # on, supports, left, right, next_to, between, closest, farthest, window_closest, window_farthest
    anchors: tuple[int, ...] = ()
    category: str | None = None  # for "supports": the category standing on top


@dataclass(frozen=True)
class Query:
    """A (possibly empty or plural) referring expression: category + attributes + relation."""

    category: str
    colour: str | None = None
    size: str | None = None
    texture: str | None = None
    relation: Relation | None = None

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(a for a in (self.size, self.colour, self.texture) if a)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(q: Query, plural: bool = False) -> str:
    """Attributes and category, no article: "large red striped chair" (or the plural)."""
    noun = CATEGORIES[q.category].plural if plural else q.category
    return " ".join([*q.attributes, noun])


class Facts:
    """Precomputed geometry of one room for relation tests (K objects)."""

    def __init__(self, room: Room):
        self.room = room
        self.objects = room.objects
        self.centres = np.array([o.centre for o in room.objects])  # [K, 3]
        self.rects = np.array([[o.lo[0], o.lo[1], o.hi[0], o.hi[1]] for o in room.objects])  # [K, 4]
        self.facing = np.array(SIDE_FACING[room.window.surface])
        self.right = np.array([self.facing[1], -self.facing[0]])
        self.window_centre = room.window.centre(room.size)
        self.categories = sorted({o.category for o in room.objects})
        self._xy = [(float(c[0]), float(c[1])) for c in self.centres]
        self._unique: dict[int, Query | None] = {}
        self._identifying: dict[int, list[Query]] = {}

    def of_category(self, category: str) -> list[int]:
        return [o.object_id for o in self.objects if o.category == category]

    def gap(self, i: int, j: int) -> float:
        """Distance between the footprints of objects i and j (0 when they overlap in xy)."""
        a, b = self.rects[i], self.rects[j]
        dx = max(a[0] - b[2], b[0] - a[2], 0.0)
        dy = max(a[1] - b[3], b[1] - a[3], 0.0)
        return float(np.hypot(dx, dy))

    def distance(self, i: int, point: np.ndarray) -> float:
        """xy distance from object i's centre to `point` (metres)."""
        return math.hypot(self._xy[i][0] - float(point[0]), self._xy[i][1] - float(point[1]))

    def holds(self, i: int, rel: Relation) -> bool:
        """Whether object i satisfies a non-superlative relation."""
        o = self.objects[i]
        if i in rel.anchors:
            return False
        if rel.kind == "on":
            return o.support == rel.anchors[0]
        if rel.kind == "supports":
            return any(p.support == i and p.category == rel.category for p in self.objects)
        if rel.kind in ("left", "right"):
            a = rel.anchors[0]
            dx, dy = self._xy[i][0] - self._xy[a][0], self._xy[i][1] - self._xy[a][1]
            lateral = dx * self.right[0] + dy * self.right[1]
            if o.support == a or self.objects[a].support == i:
                return False
            return lateral < -LATERAL_MARGIN if rel.kind == "left" else lateral > LATERAL_MARGIN
        if rel.kind == "next_to":
            a = rel.anchors[0]
            return o.support != a and self.objects[a].support != i and self.gap(i, a) <= NEXT_TO
        if rel.kind == "between":
            (ax, ay), (bx, by), (px, py) = self._xy[rel.anchors[0]], self._xy[rel.anchors[1]], self._xy[i]
            sx, sy = bx - ax, by - ay
            s = ((px - ax) * sx + (py - ay) * sy) / (sx * sx + sy * sy)
            off = math.hypot(px - ax - s * sx, py - ay - s * sy)
            return 0.15 <= s <= 0.85 and off <= BETWEEN_OFFSET and o.support not in rel.anchors
        raise ValueError(f"unknown relation {rel.kind!r}")

    def resolve(self, q: Query) -> tuple[int, ...] | None:
        """Objects denoted by `q` (sorted), or None when a superlative is ambiguous."""
        base = [i for i in self.of_category(q.category)
                if (q.colour is None or self.objects[i].colour == q.colour)
                and (q.size is None or self.objects[i].size == q.size)
                and (q.texture is None or self.objects[i].texture == q.texture)]
        rel = q.relation
        if rel is None:
            return tuple(base)
        if rel.kind not in SUPERLATIVES:
            return tuple(i for i in base if self.holds(i, rel))
        cands = [i for i in base if i not in rel.anchors and self.objects[i].support not in rel.anchors]
        if not cands:
            return ()
        point = self.window_centre if rel.kind.startswith("window") else self.centres[rel.anchors[0]]
        ranked = sorted((self.distance(i, point), i) for i in cands)
        if rel.kind in ("farthest", "window_farthest"):
            ranked.reverse()
        if len(ranked) > 1 and abs(ranked[1][0] - ranked[0][0]) < SUPERLATIVE_MARGIN:
            return None
        return (ranked[0][1],)

    def unique_np(self, i: int) -> Query | None:
        """The shortest attribute-only query that denotes exactly object i (None if attributes cannot)."""
        if i not in self._unique:
            o = self.objects[i]
            found = None
            for attrs in ((), ("colour",), ("size",), ("texture",), ("size", "colour"), ("colour", "texture"),
                          ("size", "colour", "texture")):
                q = Query(o.category, **{a: getattr(o, a) for a in attrs})
                if self.resolve(q) == (i,):
                    found = q
                    break
            self._unique[i] = found
        return self._unique[i]

    def anchor(self, i: int) -> str:
        """'the <unique noun phrase>' of a nameable object."""
        q = self.unique_np(i)
        if q is None:
            raise ValueError(f"object {i} has no unique noun phrase")
        return "the " + noun_phrase(q)

    def nameable(self) -> list[int]:
        return [o.object_id for o in self.objects if self.unique_np(o.object_id) is not None]

    def identifying(self, target: int) -> list[Query]:
        """Every attribute-subset x relation query (own attributes, own relations) denoting exactly `target`."""
        if target not in self._identifying:
            o = self.objects[target]
            out = []
            for rel in [None, *self.relations_of(target)]:
                for attrs in _ATTR_SETS:
                    q = Query(o.category, relation=rel, **{a: getattr(o, a) for a in attrs})
                    if self.resolve(q) == (target,):
                        out.append(q)
            self._identifying[target] = out
        return list(self._identifying[target])

    def relations_of(self, i: int) -> list[Relation]:
        """Every relation object i takes part in as the described object, with nameable anchors only."""
        out: list[Relation] = []
        names = [a for a in self.nameable() if a != i]
        o = self.objects[i]
        if o.support is not None and o.support in names:
            out.append(Relation("on", (o.support,)))
        for cat in sorted({p.category for p in self.objects if p.support == i}):
            out.append(Relation("supports", category=cat))
        for a in names:
            for kind in ("left", "right", "next_to"):
                if self.holds(i, Relation(kind, (a,))):
                    out.append(Relation(kind, (a,)))
            for kind in ("closest", "farthest"):
                rel = Relation(kind, (a,))
                if self.resolve(Query(o.category, relation=rel)) == (i,):
                    out.append(rel)
        for a, b in itertools.combinations(names, 2):
            if self.holds(i, Relation("between", (a, b))):
                out.append(Relation("between", (a, b)))
        for kind in ("window_closest", "window_farthest"):
            if self.resolve(Query(o.category, relation=Relation(kind))) == (i,):
                out.append(Relation(kind))
        return out

    def modifier(self, rel: Relation, plural: bool = False) -> str:
        """The relation as a post-modifier: "to the left of the bed when facing the window"."""
        k, a = rel.kind, [self.anchor(x) for x in rel.anchors]
        if k == "on":
            return f"on top of {a[0]}"
        if k == "supports":
            return f"with {article(rel.category)} {rel.category} on top"
        if k in ("left", "right"):
            return f"to the {k} of {a[0]} when facing the window"
        if k == "next_to":
            return f"next to {a[0]}"
        if k == "between":
            return f"between {a[0]} and {a[1]}"
        if k == "closest":
            return f"closest to {a[0]}"
        if k == "farthest":
            return f"farthest from {a[0]}"
        return "closest to the window" if k == "window_closest" else "farthest from the window"

    def predicate(self, rel: Relation) -> str:
        """The relation as a sentence about "it": "it has a lamp on top of it"."""
        if rel.kind == "supports":
            return f"it has {article(rel.category)} {rel.category} on top of it"
        if rel.kind in SUPERLATIVES:
            return "it is the one " + self.modifier(rel)
        return "it is " + self.modifier(rel)
