"""Benchmark: scoring paper-size grounding prediction sets, vectorised metrics against a per-sample Python loop.

Synthetic prediction sets of the paper's size, random but with realistic overlaps:
- ScanRefer val: 9,508 descriptions, 50 proposals each, scores for 50 proposals + the zero-target entry; the
  target is a jittered copy of one proposal. Work = the V3D prediction rule (argmax with fallback) + Acc@0.25/0.5
  per unique/multiple.
- Multi3DRefer val: 11,000 queries, 50 proposals, 0 to 6 targets (zero/single/multiple-target types), targets
  jittered copies of proposals whose scores are raised. Work = the cumulative 0.4 rule + Hungarian F1@0.25/0.5
  per eval type.

- ours: `threedrs.metrics.grounding` (`scanrefer_prediction` batched over all samples + `scanrefer_accuracy`;
  `multi3drefer_selection` batched, then `multi3drefer_f1`), inputs already tensors.
- ours from lists: the same functions fed the nested Python lists that json.loads gives (conversion to float32
  through NumPy included).
- loop: what people usually write (the V3D scripts' shape): per sample, argmax / softmax / sort in Python, IoU of
  each box pair with Python floats, scipy's linear_sum_assignment on the zero-padded square matrix.
Both give the same scores (checked before timing).

Time: median wall time over --repeats runs after one warm-up run of each, same inputs, same process.

Run: .venv/bin/python bench/score_grounding.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from threedrs.metrics.grounding import (
    multi3drefer_f1,
    multi3drefer_selection,
    scanrefer_accuracy,
    scanrefer_prediction,
)

PROPOSALS = 50


def random_boxes(gen: torch.Generator, *shape: int) -> torch.Tensor:
    centres = torch.rand(*shape, 3, generator=gen) * torch.tensor([8.0, 8.0, 2.5])
    sizes = torch.rand(*shape, 3, generator=gen) * 1.5 + 0.1
    return torch.cat([centres, sizes], dim=-1)


def jitter(gen: torch.Generator, boxes: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(boxes.shape, generator=gen) * 0.08
    return torch.cat([boxes[..., :3] + noise[..., :3], boxes[..., 3:] * (1 + noise[..., 3:]).clamp(min=0.5)], -1)


def make_scanrefer(samples: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    proposals = random_boxes(gen, samples, PROPOSALS)
    scores = torch.randn(samples, PROPOSALS + 1, generator=gen)
    target = torch.randint(0, PROPOSALS, (samples,), generator=gen)
    gt = jitter(gen, proposals[torch.arange(samples), target])
    types = ["unique" if u else "multiple" for u in (torch.rand(samples, generator=gen) < 0.2).tolist()]
    return {"scores": scores, "proposals": proposals, "gt": gt, "types": types}


def make_multi3drefer(queries: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    proposals = random_boxes(gen, queries, PROPOSALS)
    scores = torch.randn(queries, PROPOSALS + 1, generator=gen) * 0.05
    kinds = torch.multinomial(torch.tensor([0.1, 0.5, 0.4]), queries, replacement=True, generator=gen).tolist()
    gts, types = [], []
    for query, kind in enumerate(kinds):
        count = (0, 1, int(torch.randint(2, 7, (), generator=gen)))[kind]
        chosen = torch.randperm(PROPOSALS, generator=gen)[:count]
        scores[query, chosen] += 0.15
        if kind == 0:
            scores[query, -1] += 0.2
        gts.append(jitter(gen, proposals[query, chosen]))
        distractor = "_w_d" if bool(torch.rand((), generator=gen) < 0.5) else "_wo_d"
        types.append(("zt" + distractor, "st" + distractor, "mt")[kind])
    return {"scores": scores, "proposals": proposals, "gts": gts, "types": types}


def as_lists(data: dict) -> dict:
    """The prediction set as json.loads would give it: nested Python lists."""
    out = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        elif value and isinstance(value[0], torch.Tensor):
            value = [item.tolist() for item in value]
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------- ours


def ours_scanrefer(data: dict) -> dict:
    pred = scanrefer_prediction(data["scores"], data["proposals"])
    return scanrefer_accuracy(pred, data["gt"], data["types"])


def ours_scanrefer_from_lists(data: dict) -> dict:
    pred = scanrefer_prediction(data["scores"], data["proposals"])
    return scanrefer_accuracy(pred, data["gt"], data["types"])


def ours_multi3drefer(data: dict) -> dict:
    mask = multi3drefer_selection(data["scores"])
    preds = torch.split(data["proposals"][mask], mask.sum(dim=1).tolist())
    return multi3drefer_f1(preds, data["gts"], data["types"])


def ours_multi3drefer_from_lists(data: dict) -> dict:
    mask = multi3drefer_selection(data["scores"])
    proposals = torch.from_numpy(np.asarray(data["proposals"], dtype=np.float32))
    preds = torch.split(proposals[mask], mask.sum(dim=1).tolist())
    return multi3drefer_f1(preds, data["gts"], data["types"])


# --------------------------------------------------------------------------------------------------- loop


def loop_iou(a: list[float], b: list[float]) -> float:
    inter, vol_a, vol_b = 1.0, 1.0, 1.0
    for axis in range(3):
        lo = max(a[axis] - a[axis + 3] / 2, b[axis] - b[axis + 3] / 2)
        hi = min(a[axis] + a[axis + 3] / 2, b[axis] + b[axis + 3] / 2)
        inter *= max(0.0, hi - lo)
        vol_a *= a[axis + 3]
        vol_b *= b[axis + 3]
    return inter / (vol_a + vol_b - inter + 1e-8)


def loop_scanrefer(data: dict) -> dict:
    hits = defaultdict(lambda: [0, 0, 0])
    for scores, proposals, gt, kind in zip(data["scores"], data["proposals"], data["gt"], data["types"]):
        index = max(range(len(scores)), key=scores.__getitem__)
        if index == len(proposals):
            index = max(range(len(proposals)), key=scores.__getitem__)
        iou = loop_iou(proposals[index], gt)
        for group in ("overall", kind):
            hits[group][0] += iou >= 0.25
            hits[group][1] += iou >= 0.5
            hits[group][2] += 1
    return {g: {"Acc@0.25": 100 * a / n, "Acc@0.5": 100 * b / n, "count": n} for g, (a, b, n) in hits.items()}


def loop_f1(pred: list, gt: list) -> tuple[float, float]:
    if not pred or not gt:
        return (1.0, 1.0) if not pred and not gt else (0.0, 0.0)
    size = max(len(pred), len(gt))
    iou = np.zeros((size, size))
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            iou[i, j] = loop_iou(p, g)
    rows, cols = linear_sum_assignment(-iou)
    tp25 = tp50 = 0
    for i in range(len(pred)):
        tp25 += iou[rows[i], cols[i]] >= 0.25
        tp50 += iou[rows[i], cols[i]] >= 0.5
    return 2 * tp25 / (len(pred) + len(gt)), 2 * tp50 / (len(pred) + len(gt))


def loop_multi3drefer(data: dict) -> dict:
    sums = defaultdict(lambda: [0.0, 0.0, 0])
    for scores, proposals, gt, kind in zip(data["scores"], data["proposals"], data["gts"], data["types"]):
        pred = []
        if max(range(len(scores)), key=scores.__getitem__) != len(scores) - 1:
            top = max(scores)
            weights = [math.exp((s - top) / 0.07) for s in scores]
            total = sum(weights)
            probs = [w / total for w in weights[:-1]]
            cumulative = 0.0
            for index in sorted(range(len(probs)), key=lambda i: -probs[i]):
                pred.append(proposals[index])
                cumulative += probs[index]
                if cumulative >= 0.4:
                    break
        f1_25, f1_50 = loop_f1(pred, gt)
        for group in ("overall", kind):
            sums[group][0] += f1_25
            sums[group][1] += f1_50
            sums[group][2] += 1
    return {g: {"F1@0.25": 100 * a / n, "F1@0.5": 100 * b / n, "count": n} for g, (a, b, n) in sums.items()}


# ------------------------------------------------------------------------------------------------ harness


def median_time(fn: Callable[[dict], dict], data: dict, repeats: int) -> float:
    fn(data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_same(ours: dict, loop: dict) -> None:
    for group, expected in loop.items():
        for metric, value in expected.items():
            if not math.isclose(ours[group][metric], value, abs_tol=1e-6):
                raise AssertionError(f"{group} {metric}: ours {ours[group][metric]} != loop {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scanrefer", type=int, default=9508, help="ScanRefer descriptions")
    parser.add_argument("--multi3drefer", type=int, default=11000, help="Multi3DRefer queries")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    cases = [
        ("ScanRefer", args.scanrefer, make_scanrefer, ours_scanrefer, ours_scanrefer_from_lists, loop_scanrefer),
        (
            "Multi3DRefer",
            args.multi3drefer,
            make_multi3drefer,
            ours_multi3drefer,
            ours_multi3drefer_from_lists,
            loop_multi3drefer,
        ),
    ]
    for name, size, make, ours, ours_lists, loop in cases:
        data = make(size, seed=0)
        lists = as_lists(data)
        result = ours(data)
        check_same(result, loop(lists))
        check_same(ours_lists(lists), loop(lists))
        t_ours = median_time(ours, data, args.repeats)
        t_lists = median_time(ours_lists, lists, args.repeats)
        t_loop = median_time(loop, lists, args.repeats)
        metrics = ", ".join(f"{k} {v:.1f}" for k, v in result["overall"].items() if k != "count")
        rows.append((f"{name} ({size:,} x {PROPOSALS} proposals; {metrics})", t_ours, t_lists, t_loop))

    print(f"threads: {args.threads}, repeats: {args.repeats}\n")
    print("| prediction set | ours (s) | ours from lists (s) | loop (s) | loop / ours | loop / ours from lists |")
    print("|---|---|---|---|---|---|")
    for label, t_ours, t_lists, t_loop in rows:
        ratios = f"{t_loop / t_ours:.1f}x | {t_loop / t_lists:.1f}x"
        print(f"| {label} | {t_ours:.3f} | {t_lists:.3f} | {t_loop:.3f} | {ratios} |")


if __name__ == "__main__":
    main()
