"""ScanNet's label table and the official ScanRefer unique / multiple labels (FORMATS.md §1.1, §4.2).

`scannetv2-labels.combined.tsv` ships with every ScanNet download: tab-separated, a header row, one row per raw
category. Lookups key on column `raw_category`; the ScanRefer rule reads column `nyu40id`. Both are found by
their header names, so a table with extra or reordered columns still reads.

The official evaluation labels ScanRefer as M3DRef-CLIP's `add_evaluation_labels` does (Video-3D LLM and 3DRS use
its output): per scene, count the distinct annotated objects of the split file whose class is the same, the class
being the nyu40 id of `object_name` (underscores read as spaces) with ids outside `SCANREFER_CLASSES` folded to 39;
one object is "unique", more are "multiple". The official script maps a name missing from the table to 39 silently;
here a missing name is an error, because it means the table does not belong to the annotations.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from threedrs.data.instances import SceneDataError

SCANREFER_CLASSES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39})
"""nyu40 ids kept apart by the unique/multiple rule (floor, wall, ceiling and the rest count as 39)."""
OTHER_CLASS = 39  # nyu40 "otherprop": where every id outside SCANREFER_CLASSES goes
LABEL_COLUMNS = ("raw_category", "nyu40id")  # the columns the rule needs


def read_label_map(path: str | Path) -> dict[str, int]:
    """`scannetv2-labels.combined.tsv` -> {raw_category: nyu40id}.

    Raises SceneDataError naming the file for a missing file, a header without `raw_category` / `nyu40id`, and
    naming the row for a non-integer nyu40id.
    """
    path = Path(path)
    if not path.is_file():
        raise SceneDataError(f"{path}: ScanNet label table (scannetv2-labels.combined.tsv) not found")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh, delimiter="\t")
        header = next(rows, None)
        if header is None:
            raise SceneDataError(f"{path}: empty label table (expected a header row)")
        missing = [c for c in LABEL_COLUMNS if c not in header]
        if missing:
            raise SceneDataError(f"{path}: label table lacks column(s) {', '.join(missing)} (header: "
                                 f"{', '.join(header[:6])}{', ...' if len(header) > 6 else ''})")
        raw, nyu = header.index("raw_category"), header.index("nyu40id")
        table = {}
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                table[row[raw]] = int(row[nyu])
            except (IndexError, ValueError):
                raise SceneDataError(f"{path}, line {number}: expected a raw_category and an integer nyu40id, "
                                     f"got {row[:6]}") from None
    return table


def scanrefer_class(object_name: str, label_map: dict[str, int], where: str) -> int:
    """The class of a ScanRefer `object_name` under the unique/multiple rule (`where` names the record)."""
    name = object_name.replace("_", " ")
    if name not in label_map:
        raise SceneDataError(f"{where}: object_name {object_name!r} is not a raw_category of the ScanNet label "
                             "table (data.label_map); is it the table of this ScanNet release?")
    nyu = label_map[name]
    return nyu if nyu in SCANREFER_CLASSES else OTHER_CLASS


def scanrefer_eval_types(records: list[dict], label_map: dict[str, int], path: Path) -> list[str]:
    """"unique" / "multiple" for every record of one ScanRefer split file, by the official rule.

    records: the file's records (scene_id, object_id, object_name); path names the file in errors.
    """
    classes = [scanrefer_class(r["object_name"], label_map, f"{path}: record {i}") for i, r in enumerate(records)]
    counts: dict[tuple[str, int], int] = defaultdict(int)
    seen: set[tuple[str, str]] = set()
    for r, cls in zip(records, classes):  # an object counts once, in the class of its first record
        key = (r["scene_id"], str(r["object_id"]))
        if key not in seen:
            seen.add(key)
            counts[(r["scene_id"], cls)] += 1
    return ["unique" if counts[(r["scene_id"], cls)] == 1 else "multiple" for r, cls in zip(records, classes)]
