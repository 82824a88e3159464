"""ScanRefer / Multi3DRefer scores and the V3D prediction rules against hand-computed cases and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from threedrs.metrics.grounding import (
    best_proposal,
    multi3drefer_f1,
    multi3drefer_prediction,
    multi3drefer_selection,
    scanrefer_accuracy,
    scanrefer_prediction,
)

UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def box(cx: float, dx: float = 1.0, cy: float = 0.0) -> list[float]:
    """A box of size (dx, 1, 1) centred at (cx, cy, 0)."""
    return [cx, cy, 0.0, dx, 1.0, 1.0]


def scalar_iou(a, b) -> float:
    """Independent per-box IoU with Python floats (FORMATS §4.1)."""
    inter, vol_a, vol_b = 1.0, 1.0, 1.0
    for axis in range(3):
        lo = max(a[axis] - a[axis + 3] / 2, b[axis] - b[axis + 3] / 2)
        hi = min(a[axis] + a[axis + 3] / 2, b[axis] + b[axis + 3] / 2)
        inter *= max(0.0, hi - lo)
        vol_a *= a[axis + 3]
        vol_b *= b[axis + 3]
    return inter / (vol_a + vol_b - inter + 1e-8)


def random_boxes(generator: torch.Generator, *shape: int) -> torch.Tensor:
    centres = torch.rand(*shape, 3, generator=generator) * 3
    sizes = torch.rand(*shape, 3, generator=generator) * 1.5 + 0.2
    return torch.cat([centres, sizes], dim=-1)


# ----------------------------------------------------------------------------------------------- ScanRefer


def test_scanrefer_accuracy_inclusive_thresholds_and_groups() -> None:
    gt = [UNIT] * 6
    pred = [
        box(0.0, 2.0),  # inter 1, union 2: IoU exactly 0.5 -> hit at both
        box(0.0, 4.0),  # IoU exactly 0.25 -> hit at 0.25 only
        box(0.5),  # inter 0.5, union 1.5: 1/3
        box(2.0),  # disjoint
        box(0.0, 4.01),  # just below 0.25
        box(0.0, 2.01),  # just below 0.5
    ]
    types = ["unique", "multiple", "unique", "multiple", "unique", "multiple"]
    result = scanrefer_accuracy(torch.tensor(pred), torch.tensor(gt), types)
    assert result["overall"]["count"] == 6
    assert result["overall"]["Acc@0.25"] == pytest.approx(100 * 4 / 6)
    assert result["overall"]["Acc@0.5"] == pytest.approx(100 * 1 / 6)
    assert result["unique"] == pytest.approx({"Acc@0.25": 100 * 2 / 3, "Acc@0.5": 100 / 3, "count": 3})
    assert result["multiple"] == pytest.approx({"Acc@0.25": 100 * 2 / 3, "Acc@0.5": 0.0, "count": 3})


def test_scanrefer_accuracy_matches_scalar_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    pred = random_boxes(generator, 200)
    gt = pred + torch.cat([torch.randn(200, 3, generator=generator) * 0.3, torch.zeros(200, 3)], dim=1)
    types = ["unique" if i % 3 else "multiple" for i in range(200)]
    ious = [scalar_iou(p.tolist(), g.tolist()) for p, g in zip(pred, gt)]
    result = scanrefer_accuracy(pred, gt, types)
    for k in (0.25, 0.5):
        assert 0 < sum(i >= k for i in ious) < 200
        expected = 100 * sum(i >= k for i in ious) / 200
        assert result["overall"][f"Acc@{k}"] == pytest.approx(expected)
        unique = [i for i, t in zip(ious, types) if t == "unique"]
        assert result["unique"][f"Acc@{k}"] == pytest.approx(100 * sum(i >= k for i in unique) / len(unique))


def official_iou(a: list[float], b: list[float]) -> float:
    """Video-3D LLM's box IoU as its eval scripts compute it: NumPy float64 corners, volumes from the corners."""
    def corners(box):
        c, (l, w, h) = box[:3], box[3:]
        xyz = np.vstack([[l / 2, l / 2, -l / 2, -l / 2, l / 2, l / 2, -l / 2, -l / 2],
                         [w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2],
                         [h / 2, h / 2, h / 2, h / 2, -h / 2, -h / 2, -h / 2, -h / 2]])
        xyz[0, :] += c[0]
        xyz[1, :] += c[1]
        xyz[2, :] += c[2]
        return xyz.T
    lo1, hi1 = corners(a).min(axis=0), corners(a).max(axis=0)
    lo2, hi2 = corners(b).min(axis=0), corners(b).max(axis=0)
    low, high = np.maximum(lo1, lo2), np.minimum(hi1, hi2)
    inter = np.maximum(high[0] - low[0], 0) * np.maximum(high[1] - low[1], 0) * np.maximum(high[2] - low[2], 0)
    vol1 = (hi1[0] - lo1[0]) * (hi1[1] - lo1[1]) * (hi1[2] - lo1[2])
    vol2 = (hi2[0] - lo2[0]) * (hi2[1] - lo2[1]) * (hi2[2] - lo2[2])
    return float(inter / (vol1 + vol2 - inter + 1e-8))


def test_iou_is_the_official_float64_iou_bit_for_bit() -> None:
    from threedrs.aabb import box_iou_3d

    generator = torch.Generator().manual_seed(5)
    a = random_boxes(generator, 300).double()
    b = a + torch.cat([torch.randn(300, 3, generator=generator, dtype=torch.float64) * 0.4,
                       torch.randn(300, 3, generator=generator, dtype=torch.float64).abs() * 0.1], dim=1)
    ours = box_iou_3d(a[:, None], b[:, None])[:, 0, 0].tolist()
    assert ours == [official_iou(x, y) for x, y in zip(a.tolist(), b.tolist())]


def test_exact_ties_score_as_the_official_scripts() -> None:
    # JSON lists are float64. Containing boxes of union 2 and 4 give IoU exactly 0.5 and 0.25 up to the 1e-8.
    half, quarter = [0.0, 0.0, 0.0, 2.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0, 2.0, 1.0]
    assert official_iou(half, UNIT) < 0.5 and official_iou(quarter, UNIT) < 0.25
    # ScanRefer compares the float64 IoU: both ties are misses
    result = scanrefer_accuracy([half, quarter], [UNIT, UNIT], ["unique", "unique"])
    assert result["overall"]["Acc@0.25"] == 50.0 and result["overall"]["Acc@0.5"] == 0.0
    # float32 tensors keep their dtype, where the 1e-8 vanishes: hits (the pre-parity behaviour)
    result = scanrefer_accuracy(torch.tensor([half, quarter]), torch.tensor([UNIT, UNIT]), ["unique"] * 2)
    assert result["overall"]["Acc@0.5"] == 50.0
    # Multi3DRefer stores the float64 IoU in float32: a large tie rounds back up to the threshold (hit) ...
    f1 = multi3drefer_f1([[quarter]], [[UNIT]], ["st_w_d"])
    assert f1["overall"]["F1@0.25"] == 100.0 and f1["overall"]["F1@0.5"] == 0.0
    assert np.float32(official_iou(quarter, UNIT)) == np.float32(0.25)
    # ... a small one (union 2**-7 m^3) does not: the 1e-8 is too large to round away (miss)
    small_quarter, small_unit = [0.0, 0.0, 0.0, 0.25, 0.25, 0.125], [0.0, 0.0, 0.0, 0.125, 0.125, 0.125]
    assert np.float32(official_iou(small_quarter, small_unit)) < np.float32(0.25)
    f1 = multi3drefer_f1([[small_quarter]], [[small_unit]], ["st_w_d"])
    assert f1["overall"]["F1@0.25"] == 0.0
    with pytest.raises(ValueError, match="pred_boxes: expected a rectangular array of numbers"):
        scanrefer_accuracy([UNIT, UNIT[:5]], [UNIT, UNIT], ["unique"] * 2)


def test_scanrefer_accuracy_empty_group_is_nan() -> None:
    result = scanrefer_accuracy(torch.tensor([UNIT]), torch.tensor([UNIT]), ["unique"])
    assert result["unique"]["Acc@0.5"] == 100.0
    assert result["multiple"]["count"] == 0 and math.isnan(result["multiple"]["Acc@0.5"])


@pytest.mark.parametrize(
    ("pred", "gt", "types", "match"),
    [
        ([UNIT, UNIT], [UNIT], ["unique", "unique"], "pred_boxes: 2 boxes but gt_boxes has 1"),
        ([UNIT], [UNIT], ["unique", "multiple"], "eval_types: expected 1 entries"),
        ([UNIT], [UNIT], ["zt_w_d"], r"eval_types\[0\]: unknown eval type 'zt_w_d'"),
        ([UNIT[:5]], [UNIT], ["unique"], r"pred_boxes: expected boxes of shape \[N, 6\], got \[1, 5\]"),
        ([UNIT], [[0, 0, 0, 1, 0, 1.0]], ["unique"], "gt_boxes: box 0 has a non-positive size"),
        ([UNIT, [0, 0, 0, 1, -1, 1.0]], [UNIT, UNIT], ["unique"] * 2, "pred_boxes: box 1 has a non-positive"),
        ([[0, math.nan, 0, 1, 1, 1]], [UNIT], ["unique"], "pred_boxes: box 0 has non-finite values"),
        ([], [], [], "pred_boxes: no samples"),
    ],
)
def test_scanrefer_accuracy_bad_input(pred, gt, types, match) -> None:
    with pytest.raises(ValueError, match=match):
        scanrefer_accuracy(torch.tensor(pred), torch.tensor(gt), types)


def test_scanrefer_prediction_argmax_fallback_and_batch() -> None:
    proposals = torch.tensor([box(0.0), box(2.0), box(4.0)])
    assert scanrefer_prediction(torch.tensor([0.1, 0.9, 0.3, 0.2]), proposals).tolist() == box(2.0)
    # the zero-target entry wins: fall back to the best real proposal
    assert scanrefer_prediction(torch.tensor([0.1, 0.2, 0.3, 5.0]), proposals).tolist() == box(4.0)
    # ties go to the lowest index
    assert scanrefer_prediction(torch.tensor([0.7, 0.7, 0.1, 0.0]), proposals).tolist() == box(0.0)
    scores = torch.tensor([[[0.1, 0.9, 0.3, 0.2], [0.1, 0.2, 0.3, 5.0]]])
    batched = scanrefer_prediction(scores, proposals.expand(1, 2, 3, 6))
    assert batched.tolist() == [[box(2.0), box(4.0)]]


def test_scanrefer_prediction_bad_input() -> None:
    proposals = torch.tensor([UNIT, UNIT])
    with pytest.raises(ValueError, match=r"scores: expected shape \[..., P \+ 1\] matching proposals"):
        scanrefer_prediction(torch.tensor([0.1, 0.2]), proposals)
    with pytest.raises(ValueError, match=r"proposals: no proposal to choose from"):
        scanrefer_prediction(torch.tensor([0.1]), torch.zeros(0, 6))
    with pytest.raises(ValueError, match="scores: non-finite"):
        scanrefer_prediction(torch.tensor([0.1, math.inf, 0.0]), proposals)


# ------------------------------------------------------------------------------------------ Multi3DRefer rule


def scores_for(probs: list[float], temperature: float = 0.07) -> torch.Tensor:
    """Scores whose softmax(scores / temperature) equals ``probs`` (normalised)."""
    return temperature * torch.log(torch.tensor(probs, dtype=torch.float64))


def test_multi3drefer_rule_includes_the_crossing_proposal() -> None:
    proposals = torch.tensor([box(0.0), box(2.0), box(4.0), box(6.0)])
    # real probabilities 0.30, 0.05, 0.25, 0.15 (+ 0.25 zero-target): 0.30 < 0.4, then 0.25 crosses -> stop
    scores = scores_for([0.30, 0.05, 0.25, 0.15, 0.25])
    assert multi3drefer_selection(scores).tolist() == [True, False, True, False]
    assert multi3drefer_prediction(scores, proposals).tolist() == [box(0.0), box(4.0)]
    # the first proposal alone reaches 0.4: a single box
    scores = scores_for([0.45, 0.20, 0.05, 0.05, 0.25])
    assert multi3drefer_prediction(scores, proposals).tolist() == [box(0.0)]
    # a lower threshold keeps only the top box; 1.0 keeps all (real probabilities sum below 1)
    scores = scores_for([0.30, 0.05, 0.25, 0.15, 0.25])
    assert multi3drefer_selection(scores, threshold=0.25).tolist() == [True, False, False, False]
    assert multi3drefer_selection(scores, threshold=1.0).tolist() == [True] * 4


def test_multi3drefer_rule_zero_target_argmax_gives_empty_set() -> None:
    proposals = torch.tensor([box(0.0), box(2.0)])
    scores = scores_for([0.30, 0.30, 0.40])
    assert multi3drefer_prediction(scores, proposals).shape == (0, 6)
    # no proposal at all: only the zero-target entry
    assert multi3drefer_prediction(torch.tensor([1.0]), torch.zeros(0, 6)).shape == (0, 6)


def loop_selection(scores: list[float], threshold: float, temperature: float) -> list[bool]:
    """Independent sequential version of the V3D rule."""
    chosen = [False] * (len(scores) - 1)
    if max(range(len(scores)), key=lambda i: (scores[i], -i)) == len(scores) - 1:
        return chosen
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    probs = [w / sum(weights) for w in weights[:-1]]
    total = 0.0
    for index in sorted(range(len(probs)), key=lambda i: -probs[i]):
        chosen[index] = True
        total += probs[index]
        if total >= threshold:
            break
    return chosen


def test_multi3drefer_selection_matches_sequential_loop_batched() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(64, 9, generator=generator, dtype=torch.float64) * 0.4
    masks = multi3drefer_selection(scores, threshold=0.5, temperature=0.1)
    assert masks.shape == (64, 8)
    sizes = set()
    for row, mask in zip(scores.tolist(), masks.tolist()):
        assert mask == loop_selection(row, 0.5, 0.1)
        sizes.add(sum(mask))
    assert {0, 1} < sizes and max(sizes) > 1  # empty, single and multiple sets all exercised


# 50 proposals whose float32 probabilities cross 0.4 at the 17th: the official loop adds them one at a time in
# float32 and takes 17; a float32 cumsum (which torch accumulates in float64) stops at 16.
CROSSING_SCORES = [
    0.011904937215149403, 0.035069722682237625, 0.0396646112203598, 0.013829076662659645, 0.014857984147965908,
    0.0409051775932312, 0.04506435990333557, 0.0010760605800896883, 0.03524860739707947, 0.04573338106274605,
    0.025589099153876305, 0.006641486193984747, 0.03282821923494339, 0.03711234778165817, 0.00906491931527853,
    0.04606510326266289, 0.009270858950912952, 0.045913126319646835, 0.00622784486040473, 0.02805166505277157,
    0.015608087182044983, 0.04746276140213013, 0.022249629721045494, 0.04245664179325104, 0.04900970682501793,
    0.00048247279482893646, 0.026639897376298904, 0.012839257717132568, 0.028963318094611168, 0.02013329230248928,
    0.02419690601527691, 0.04057874530553818, 0.0403316505253315, 0.014195394702255726, 0.03772902116179466,
    0.018237004056572914, 0.00943486113101244, 0.04711868613958359, 0.045623261481523514, 0.026682455092668533,
    0.0012884289026260376, 0.049089718610048294, 0.005428108852356672, 0.029836956411600113, 0.02388039231300354,
    0.02744782343506813, 0.022673863917589188, 0.0027086108457297087, 0.03874894604086876, 0.03896014019846916,
    -1.0]


def test_multi3drefer_cumulative_rule_accumulates_in_float32_as_the_official_loop() -> None:
    scores = torch.tensor(CROSSING_SCORES)  # float32, as the official script reads them
    probs, order = torch.sort(torch.softmax(scores / 0.07, dim=0)[:-1], descending=True)
    running, official = torch.zeros(()), []
    for index, p in zip(order.tolist(), probs):
        running = running + p
        official.append(index)
        if running >= 0.4:
            break
    before = torch.cat([torch.zeros(1), probs.cumsum(0)[:-1]])
    assert len(official) == 17 and int((before < 0.4).sum()) == 16
    mask = multi3drefer_selection(CROSSING_SCORES)  # a JSON list: read as float32 like the official script
    assert sorted(torch.nonzero(mask)[:, 0].tolist()) == sorted(official)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, r"threshold: expected a value in \(0, 1\]"),
        ({"threshold": 1.5}, r"threshold: expected a value in \(0, 1\]"),
        ({"temperature": 0.0}, "temperature: expected a positive value"),
    ],
)
def test_multi3drefer_rule_bad_parameters(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        multi3drefer_selection(torch.tensor([0.2, 0.1]), **kwargs)


def test_multi3drefer_prediction_bad_input() -> None:
    with pytest.raises(ValueError, match=r"scores: expected shape \[3\] \(P \+ 1\), got \[2\]"):
        multi3drefer_prediction(torch.tensor([0.2, 0.1]), torch.tensor([UNIT, UNIT]))
    with pytest.raises(ValueError, match=r"proposals: expected boxes of shape \[N, 6\]"):
        multi3drefer_prediction(torch.tensor([0.2, 0.1]), torch.tensor([UNIT[:4]]))


# -------------------------------------------------------------------------------------------- Multi3DRefer F1


def test_multi3drefer_f1_more_predictions_than_targets() -> None:
    # targets A at x=0 and B at x=5; predictions: exact A (IoU 1), B shifted by 0.5 (IoU 1/3), one far away
    gts = [torch.tensor([box(0.0), box(5.0)])]
    preds = [torch.tensor([box(0.0), box(5.5), box(20.0)])]
    result = multi3drefer_f1(preds, gts, ["mt"])
    # TP@0.25 = 2, TP@0.5 = 1, P + G = 5
    assert result["mt"] == pytest.approx({"F1@0.25": 80.0, "F1@0.5": 40.0, "count": 1})
    assert result["overall"] == result["mt"]


def test_multi3drefer_f1_fewer_predictions_than_targets() -> None:
    # one prediction with IoU exactly 0.5 to target A; three targets: TP = 1 at both, F1 = 2 / 4
    gts = [torch.tensor([box(0.0), box(5.0), box(9.0)])]
    preds = [torch.tensor([box(0.0, 2.0)])]
    result = multi3drefer_f1(preds, gts, ["mt"])
    assert result["mt"] == pytest.approx({"F1@0.25": 50.0, "F1@0.5": 50.0, "count": 1})


def test_multi3drefer_f1_matching_is_optimal_not_greedy() -> None:
    # targets x in [0, 1] and [0.5, 1.5]; IoU matrix (rows = predictions) [[2/3, 7/13], [3/5, 1/7]].
    # Taking the largest IoU first pairs p0-g0 and leaves p1-g1 (1/7): TP = 1. The optimal matching pairs
    # p0-g1 and p1-g0: TP = 2 at both thresholds.
    gts = [torch.tensor([box(0.5), box(1.0)])]
    preds = [torch.tensor([box(0.7), box(0.25)])]
    result = multi3drefer_f1(preds, gts, ["mt"])
    assert result["mt"] == pytest.approx({"F1@0.25": 100.0, "F1@0.5": 100.0, "count": 1})


def test_multi3drefer_f1_duplicate_predictions_match_once() -> None:
    # two near-copies of the single target: only one can be matched, TP = 1, F1 = 2 / 3
    preds = [torch.tensor([box(0.0), box(0.1)])]
    result = multi3drefer_f1(preds, [torch.tensor([UNIT])], ["st_w_d"])
    assert result["st_w_d"] == pytest.approx({"F1@0.25": 200 / 3, "F1@0.5": 200 / 3, "count": 1})


def test_multi3drefer_f1_zero_targets() -> None:
    preds = [torch.zeros(0, 6), torch.tensor([UNIT, box(3.0)]), torch.zeros(0, 6), torch.tensor([UNIT])]
    gts = [torch.tensor([]), torch.zeros(0, 6), torch.tensor([UNIT]), torch.tensor([UNIT])]
    types = ["zt_w_d", "zt_wo_d", "st_wo_d", "st_w_d"]
    result = multi3drefer_f1(preds, gts, types)
    assert result["zt_w_d"] == {"F1@0.25": 100.0, "F1@0.5": 100.0, "count": 1}  # P = G = 0
    assert result["zt_wo_d"] == {"F1@0.25": 0.0, "F1@0.5": 0.0, "count": 1}  # P > 0, G = 0
    assert result["st_wo_d"] == {"F1@0.25": 0.0, "F1@0.5": 0.0, "count": 1}  # P = 0, G > 0
    assert result["st_w_d"] == {"F1@0.25": 100.0, "F1@0.5": 100.0, "count": 1}
    assert result["overall"] == {"F1@0.25": 50.0, "F1@0.5": 50.0, "count": 4}
    assert result["mt"]["count"] == 0 and math.isnan(result["mt"]["F1@0.5"])


def brute_force_f1(pred: list, gt: list) -> tuple[float, float]:
    """All assignments of the zero-padded square matrix; TP of the best total IoU."""
    if not pred or not gt:
        return (1.0, 1.0) if not pred and not gt else (0.0, 0.0)
    size = max(len(pred), len(gt))
    iou = np.zeros((size, size))
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            iou[i, j] = scalar_iou(p, g)
    best = max(itertools.permutations(range(size)), key=lambda perm: sum(iou[i, perm[i]] for i in range(size)))
    matched = [iou[i, best[i]] for i in range(len(pred))]
    return tuple(2 * sum(m >= k for m in matched) / (len(pred) + len(gt)) for k in (0.25, 0.5))


def test_multi3drefer_f1_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(2)
    preds, gts, expected = [], [], []
    for _ in range(60):
        num_pred, num_gt = torch.randint(0, 5, (2,), generator=generator).tolist()
        gt = random_boxes(generator, num_gt)
        jitter = torch.randn(num_pred, 6, generator=generator) * 0.25
        jitter[:, 3:] = 0
        pred = random_boxes(generator, num_pred)
        if num_gt:  # jittered copies of the targets, several per target when num_pred > num_gt
            pred = gt[torch.arange(num_pred) % num_gt] + jitter
        preds.append(pred)
        gts.append(gt)
        expected.append(brute_force_f1(pred.tolist(), gt.tolist()))
    result = multi3drefer_f1(preds, gts, ["mt"] * 60)
    expected = np.array(expected)
    assert 0 < expected[:, 1].mean() < expected[:, 0].mean() < 1
    assert result["overall"]["F1@0.25"] == pytest.approx(100 * expected[:, 0].mean())
    assert result["overall"]["F1@0.5"] == pytest.approx(100 * expected[:, 1].mean())


@pytest.mark.parametrize(
    ("preds", "gts", "types", "match"),
    [
        ([[UNIT]], [[UNIT], [UNIT]], ["mt"], "preds: 1 queries but gts has 2"),
        ([[UNIT]], [[UNIT]], ["zt"], r"eval_types\[0\]: unknown eval type 'zt'"),
        ([[UNIT], [UNIT[:3]]], [[UNIT], [UNIT]], ["mt", "mt"], r"preds\[1\]: expected boxes of shape \[N, 6\]"),
        ([[UNIT]], [[UNIT, [1, 1, 1, 0, 1, 1]]], ["mt"], r"gts\[0\]: box 1 has a non-positive size"),
        ([], [], [], "preds: no queries"),
    ],
)
def test_multi3drefer_f1_bad_input(preds, gts, types, match) -> None:
    with pytest.raises(ValueError, match=match):
        multi3drefer_f1([torch.tensor(p) for p in preds], [torch.tensor(g) for g in gts], types)


# ----------------------------------------------------------------------------------------- Scan2Cap detection


def test_best_proposal() -> None:
    proposals = torch.tensor([box(0.5), box(0.0, 2.0), box(5.0)])  # IoU 1/3, exactly 0.5, 0 with UNIT
    assert best_proposal(torch.tensor(UNIT), proposals) == (1, pytest.approx(0.5))
    index, iou = best_proposal(torch.tensor(UNIT), proposals[[0, 2]])
    assert index is None and iou == pytest.approx(1 / 3)
    assert best_proposal(torch.tensor(UNIT), proposals[[0, 2]], min_iou=0.3)[0] == 0
    assert best_proposal(torch.tensor(UNIT), torch.zeros(0, 6)) == (None, 0.0)


def test_best_proposal_bad_input() -> None:
    with pytest.raises(ValueError, match=r"gt_box: expected shape \[6\], got \[1, 6\]"):
        best_proposal(torch.tensor([UNIT]), torch.tensor([UNIT]))
    with pytest.raises(ValueError, match="gt_box: box 0 has a non-positive size"):
        best_proposal(torch.tensor([0, 0, 0, 0, 0, 0.0]), torch.tensor([UNIT]))
    with pytest.raises(ValueError, match="proposals: box 0 has a non-positive size"):
        best_proposal(torch.tensor(UNIT), torch.tensor([[0, 0, 0, 1, 1, -2.0]]))
