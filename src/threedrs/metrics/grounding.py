"""ScanRefer and Multi3DRefer scores, the Video-3D LLM prediction rules, and Scan2Cap's detection test.

Conventions (FORMATS.md §3.6.7, §4.1-§4.4):
- Boxes are axis-aligned ``[cx, cy, cz, dx, dy, dz]`` in metres, in the scene's aligned frame. Every box must be
  finite with all three sizes > 0; a degenerate box is an input error.
- Inputs may be tensors, NumPy arrays or nested lists (as json.loads gives them); lists and integer values become
  float64 (the Python floats of a JSON file, as the official scripts read them), floating tensors and arrays keep
  their dtype. Everything is computed on the CPU.
- IoU is :func:`threedrs.aabb.box_iou_3d`, Video-3D LLM's `box3d_iou` operation for operation
  (``inter / (vol_a + vol_b - inter + 1e-8)``). Official parity at ties, for boxes read from JSON (float64):
  ScanRefer compares the float64 IoU, where the ``1e-8`` tips a tie at exactly 0.25 or 0.5 just below (a miss);
  Multi3DRefer stores each float64 IoU in a float32 matrix before matching and thresholds, as the official
  script does, so such a tie is a hit when the union volume exceeds about 0.34 m^3 (the ``1e-8`` then rounds
  away) and a miss below. Scan2Cap's detection test compares the float64 IoU.
- Thresholds are inclusive: a hit at k means ``IoU >= k``.
- Grounding scores come as ``P + 1`` floats: one per proposal, then the learned zero-target entry **last**. The
  Multi3DRefer rule works on them in float32 (the official script's ``torch.tensor(scores)``) and accumulates the
  cumulative probability in float32, one proposal after the other, as the official loop does.
- Reported accuracies and F1 values are percentages (x100). A group with no sample reports NaN with count 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from threedrs.aabb import box_iou_3d
from threedrs.data.tasks import MULTI3DREFER_EVAL_TYPES, SCANREFER_EVAL_TYPES

__all__ = [
    "MULTI3DREFER_EVAL_TYPES",
    "SCANREFER_EVAL_TYPES",
    "best_proposal",
    "multi3drefer_f1",
    "multi3drefer_f1_per_query",
    "multi3drefer_prediction",
    "multi3drefer_selection",
    "scanrefer_accuracy",
    "scanrefer_hits",
    "scanrefer_prediction",
]

THRESHOLDS = (0.25, 0.5)


def _to_tensor(name: str, values: Tensor | np.ndarray | Sequence) -> Tensor:
    """CPU tensor: tensors and arrays keep their dtype; nested lists (as json.loads gives them) become float64."""
    if isinstance(values, Tensor):
        return values.detach().cpu()
    if isinstance(values, np.ndarray):
        return torch.from_numpy(values)
    try:
        return torch.from_numpy(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected a rectangular array of numbers ({error})") from None


def _as_boxes(name: str, boxes: Tensor | Sequence, *, batched: bool = False) -> Tensor:
    """Validate boxes: shape [N, 6] ([..., N, 6] when ``batched``), finite, sizes > 0. Empty input -> [0, 6]."""
    t = _to_tensor(name, boxes)
    if not batched and t.numel() == 0:
        t = t.reshape(0, 6)
    if t.ndim < 2 or (not batched and t.ndim != 2) or t.shape[-1] != 6:
        layout = "[..., N, 6]" if batched else "[N, 6]"
        raise ValueError(f"{name}: expected boxes of shape {layout}, got {list(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    # any NaN or inf makes the sum non-finite; the exact element-wise test only runs when it is (or overflowed)
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: box {_first_index(~torch.isfinite(t).all(dim=-1))} has non-finite values")
    if not bool((t[..., 3:] > 0).all()):
        index = _first_index((t[..., 3:] <= 0).any(dim=-1))
        raise ValueError(f"{name}: box {index} has a non-positive size {t[index][3:].tolist()}")
    return t


def _first_index(mask: Tensor) -> tuple[int, ...] | int:
    index = tuple(int(i) for i in mask.nonzero()[0])
    return index[0] if len(index) == 1 else index


def _as_scores(name: str, scores: Tensor | Sequence) -> Tensor:
    t = _to_tensor(name, scores)
    if t.ndim < 1 or t.shape[-1] == 0:
        raise ValueError(f"{name}: expected scores of shape [..., P + 1], got {list(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):  # fast path as for boxes
        raise ValueError(f"{name}: non-finite scores")
    return t


def _check_eval_types(eval_types: Sequence[str], allowed: tuple[str, ...], count: int) -> None:
    if len(eval_types) != count:
        raise ValueError(f"eval_types: expected {count} entries (one per sample), got {len(eval_types)}")
    for i, eval_type in enumerate(eval_types):
        if eval_type not in allowed:
            raise ValueError(f"eval_types[{i}]: unknown eval type {eval_type!r}, expected one of {allowed}")


def _group_means(values: dict[str, np.ndarray], eval_types: Sequence[str], groups: tuple[str, ...]) -> dict:
    """{"overall"|group: {metric: mean x100 (NaN if empty), "count": n}} from per-sample 0..1 values."""
    types = np.asarray(eval_types, dtype=object)
    result = {}
    for group in ("overall", *groups):
        mask = np.ones(len(types), dtype=bool) if group == "overall" else types == group
        count = int(mask.sum())
        entry: dict[str, float | int] = {
            metric: float(per_sample[mask].mean() * 100) if count else float("nan")
            for metric, per_sample in values.items()
        }
        entry["count"] = count
        result[group] = entry
    return result


def scanrefer_prediction(scores: Tensor, proposals: Tensor) -> Tensor:
    """V3D's ScanRefer rule (FORMATS §4.2): the proposal with the highest score, never the zero-target entry.

    Args:
        scores: [..., P + 1] float, proposal scores then the zero-target score last.
        proposals: [..., P, 6] float boxes, P >= 1; leading dims equal to those of ``scores``.
    Returns:
        [..., 6] the chosen proposal. When the argmax of all P + 1 scores is the zero-target entry, the argmax
        over the P real proposals is taken instead. Ties go to the lowest index.
    """
    scores = _as_scores("scores", scores)
    proposals = _as_boxes("proposals", proposals, batched=True)
    if proposals.shape[:-2] != scores.shape[:-1] or proposals.shape[-2] + 1 != scores.shape[-1]:
        raise ValueError(
            f"scores: expected shape [..., P + 1] matching proposals {list(proposals.shape)}, "
            f"got {list(scores.shape)}"
        )
    num = proposals.shape[-2]
    if num == 0:
        raise ValueError("proposals: no proposal to choose from (P = 0)")
    index = scores.argmax(dim=-1)
    index = torch.where(index == num, scores[..., :num].argmax(dim=-1), index)
    return proposals.gather(-2, index[..., None, None].expand(*index.shape, 1, 6)).squeeze(-2)


def multi3drefer_selection(scores: Tensor, threshold: float = 0.4, temperature: float = 0.07) -> Tensor:
    """V3D's Multi3DRefer rule (FORMATS §4.3) as a mask over the proposals, computed as the official script does.

    Empty when the argmax of all P + 1 scores is the zero-target entry. Otherwise p = softmax(scores / temperature)
    over all P + 1 entries (float32), the last dropped; proposals sorted by p descending are taken while the float32
    running sum of those before them is below ``threshold``, so the one that crosses it is included.

    Args:
        scores: [..., P + 1] float (cast to float32, as the official ``torch.tensor(scores)`` reads them).
        threshold: cumulative probability to reach, in (0, 1].
        temperature: softmax temperature, > 0.
    Returns:
        [..., P] bool, True for the selected proposals.
    """
    scores = _as_scores("scores", scores).to(torch.float32)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold}")
    if not temperature > 0.0:
        raise ValueError(f"temperature: expected a positive value, got {temperature}")
    probs = torch.softmax(scores / temperature, dim=-1)[..., :-1]
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    before = torch.empty_like(sorted_probs)
    running = torch.zeros(sorted_probs.shape[:-1], dtype=sorted_probs.dtype)
    for k in range(sorted_probs.shape[-1]):  # float32, one addition at a time (torch.cumsum adds in float64)
        before[..., k] = running
        running = running + sorted_probs[..., k]
    take_sorted = before < threshold
    take_sorted &= (scores.argmax(dim=-1) != scores.shape[-1] - 1)[..., None]
    return torch.zeros_like(take_sorted).scatter(-1, order, take_sorted)


def multi3drefer_prediction(
    scores: Tensor, proposals: Tensor, threshold: float = 0.4, temperature: float = 0.07
) -> Tensor:
    """The predicted box set of one Multi3DRefer query (see :func:`multi3drefer_selection`).

    Args:
        scores: [P + 1] float, proposal scores then the zero-target score last.
        proposals: [P, 6] float boxes.
        threshold, temperature: as in :func:`multi3drefer_selection`.
    Returns:
        [k, 6] the selected proposals in descending probability order; k = 0 for a zero-target prediction.
    """
    scores = _as_scores("scores", scores)
    proposals = _as_boxes("proposals", proposals)
    if scores.ndim != 1 or scores.shape[0] != proposals.shape[0] + 1:
        raise ValueError(f"scores: expected shape [{proposals.shape[0] + 1}] (P + 1), got {list(scores.shape)}")
    mask = multi3drefer_selection(scores, threshold, temperature)
    order = scores[:-1].argsort(descending=True, stable=True)
    return proposals[order[mask[order]]]


def scanrefer_hits(pred_boxes: Tensor, gt_boxes: Tensor) -> np.ndarray:
    """Per-description ScanRefer hits (FORMATS §4.2): hit@k = IoU(pred, gt) >= k.

    Args:
        pred_boxes: [N, 6] float, one predicted box per description, N >= 1.
        gt_boxes: [N, 6] float, the target boxes.
    Returns:
        [N, 2] float64 in {0, 1}: column 0 is hit@0.25, column 1 hit@0.5.
    """
    pred = _as_boxes("pred_boxes", pred_boxes)
    gt = _as_boxes("gt_boxes", gt_boxes)
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"pred_boxes: {pred.shape[0]} boxes but gt_boxes has {gt.shape[0]}")
    if pred.shape[0] == 0:
        raise ValueError("pred_boxes: no samples to score")
    dtype = torch.promote_types(pred.dtype, gt.dtype)
    iou = box_iou_3d(pred.to(dtype)[:, None], gt.to(dtype)[:, None])[:, 0, 0].numpy()
    return np.stack([(iou >= k).astype(np.float64) for k in THRESHOLDS], axis=1)


def scanrefer_accuracy(pred_boxes: Tensor, gt_boxes: Tensor, eval_types: Sequence[str]) -> dict:
    """ScanRefer Acc@0.25 / Acc@0.5 (FORMATS §4.2): the means of :func:`scanrefer_hits`.

    Args:
        pred_boxes: [N, 6] float, one predicted box per description.
        gt_boxes: [N, 6] float, the target boxes.
        eval_types: N strings, "unique" or "multiple".
    Returns:
        ``{"overall"|"unique"|"multiple": {"Acc@0.25": %, "Acc@0.5": %, "count": n}}``.
    """
    hits = scanrefer_hits(pred_boxes, gt_boxes)
    _check_eval_types(eval_types, SCANREFER_EVAL_TYPES, hits.shape[0])
    per_sample = {f"Acc@{k}": hits[:, i] for i, k in enumerate(THRESHOLDS)}
    return _group_means(per_sample, eval_types, SCANREFER_EVAL_TYPES)


def _as_box_list(name: str, items: Sequence[Tensor | Sequence]) -> tuple[Tensor, Tensor]:
    """Validate Q box sets [n_i, 6] at once. Returns (all boxes concatenated [sum n_i, 6], counts [Q] int64)."""
    boxes = []
    for i, item in enumerate(items):
        t = _to_tensor(f"{name}[{i}]", item)
        if t.numel() == 0:
            t = t.reshape(0, 6)
        if t.ndim != 2 or t.shape[-1] != 6:
            raise ValueError(f"{name}[{i}]: expected boxes of shape [N, 6], got {list(t.shape)}")
        boxes.append(t if t.is_floating_point() else t.to(torch.float32))
    counts = torch.tensor([t.shape[0] for t in boxes], dtype=torch.int64)
    dtype = functools.reduce(torch.promote_types, {t.dtype for t in boxes})
    flat = torch.cat([t if t.dtype == dtype else t.to(dtype) for t in boxes])
    try:
        _as_boxes(name, flat)
    except ValueError:
        for i, t in enumerate(boxes):  # re-check set by set to name the offending one
            _as_boxes(f"{name}[{i}]", t)
        raise
    return flat, counts


def _true_positives(preds: Tensor, num_pred: Tensor, gts: Tensor, num_gt: Tensor) -> np.ndarray:
    """TP@0.25 and TP@0.5 of every query after Hungarian matching (FORMATS §4.3).

    Args:
        preds: [sum P_i, 6] all predicted boxes, query after query; num_pred: [Q] the P_i.
        gts: [sum G_i, 6] all target boxes; num_gt: [Q] the G_i.
    Returns:
        [Q, 2] float64 true-positive counts. The IoU of every (prediction, target) pair of every query comes
        from one vectorised call. A query with one prediction or one target needs no matching: the optimal
        matching pairs it with its best overlap, so TP@k = [max IoU >= k]. The others run
        ``linear_sum_assignment(-IoU)`` on the square zero-padded [n, n] matrix, n = max(P, G), and count the
        matched real prediction rows with IoU >= k.
    """
    queries = len(num_pred)
    num_pairs = num_pred * num_gt
    total = int(num_pairs.sum())
    tp = np.zeros((queries, len(THRESHOLDS)))
    if total == 0:
        return tp
    dtype = torch.promote_types(preds.dtype, gts.dtype)
    query = torch.repeat_interleave(torch.arange(queries), num_pairs)
    local = torch.arange(total) - (num_pairs.cumsum(0) - num_pairs)[query]
    cols = num_gt[query]
    row = (num_pred.cumsum(0) - num_pred)[query] + local // cols
    col = (num_gt.cumsum(0) - num_gt)[query] + local % cols
    # computed in the inputs' dtype (float64 from JSON), then stored in float32 as the official IoU matrix is
    iou = box_iou_3d(preds.to(dtype)[row][:, None], gts.to(dtype)[col][:, None])[:, 0, 0].to(torch.float32)
    best = torch.zeros(queries, dtype=iou.dtype).scatter_reduce(0, query, iou, "amax")
    single = ((num_pred == 1) | (num_gt == 1)).numpy()
    for i, k in enumerate(THRESHOLDS):
        tp[single, i] = (best.numpy()[single] >= k).astype(np.float64)
    flat = iou.numpy()
    ends = num_pairs.cumsum(0).numpy()
    counts_pred, counts_gt = num_pred.numpy(), num_gt.numpy()
    for q in np.flatnonzero(~single & (num_pairs.numpy() > 0)).tolist():
        n, m = int(counts_pred[q]), int(counts_gt[q])
        size = max(n, m)
        square = np.zeros((size, size), dtype=flat.dtype)
        square[:n, :m] = flat[ends[q] - n * m : ends[q]].reshape(n, m)
        _, matched_cols = linear_sum_assignment(-square)  # rows come back as 0..size-1
        matched = square[np.arange(n), matched_cols[:n]]
        tp[q] = [np.count_nonzero(matched >= k) for k in THRESHOLDS]
    return tp


def multi3drefer_f1_per_query(preds: Sequence[Tensor], gts: Sequence[Tensor]) -> np.ndarray:
    """Per-query Multi3DRefer F1 (FORMATS §4.3), the values :func:`multi3drefer_f1` averages.

    Args:
        preds: Q >= 1 tensors [P_i, 6] float, the predicted boxes (P_i may be 0).
        gts: Q tensors [G_i, 6] float, the target boxes (G_i may be 0).
    Returns:
        [Q, 2] float64 in [0, 1]: column 0 is F1@0.25, column 1 F1@0.5.
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds: {len(preds)} queries but gts has {len(gts)}")
    if not preds:
        raise ValueError("preds: no queries to score")
    pred_boxes, num_pred = _as_box_list("preds", preds)
    gt_boxes, num_gt = _as_box_list("gts", gts)
    tp = _true_positives(pred_boxes, num_pred, gt_boxes, num_gt)
    denominator = (num_pred + num_gt).numpy()[:, None].astype(np.float64)
    return np.where(denominator == 0, 1.0, 2.0 * tp / np.maximum(denominator, 1.0))  # P = G = 0 scores 1


def multi3drefer_f1(preds: Sequence[Tensor], gts: Sequence[Tensor], eval_types: Sequence[str]) -> dict:
    """Multi3DRefer F1@0.25 / F1@0.5 with Hungarian matching (FORMATS §4.3).

    Per query with P predicted and G target boxes: P = G = 0 gives 1; exactly one of them 0 gives 0. The
    zero-target case is decided by G = 0 as in V3D (M3DRef-CLIP uses the eval type instead; both agree when
    zero-target types have no targets). Otherwise the square zero-padded IoU matrix (rows = predictions) is
    matched by ``linear_sum_assignment(-IoU)``, TP@k counts matched real prediction rows with IoU >= k, and
    F1@k = 2 TP@k / (P + G). Zero-target queries therefore score the same at both thresholds.

    Args:
        preds: Q tensors [P_i, 6] float, the predicted boxes (P_i may be 0; any empty tensor is accepted).
        gts: Q tensors [G_i, 6] float, the target boxes.
        eval_types: Q strings among ``MULTI3DREFER_EVAL_TYPES``.
    Returns:
        ``{"overall"|eval_type: {"F1@0.25": %, "F1@0.5": %, "count": n}}`` (mean over queries, x100).
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds: {len(preds)} queries but gts has {len(gts)}")
    if not preds:
        raise ValueError("preds: no queries to score")
    _check_eval_types(eval_types, MULTI3DREFER_EVAL_TYPES, len(preds))
    f1 = multi3drefer_f1_per_query(preds, gts)
    per_sample = {f"F1@{k}": f1[:, i] for i, k in enumerate(THRESHOLDS)}
    return _group_means(per_sample, eval_types, MULTI3DREFER_EVAL_TYPES)


def best_proposal(gt_box: Tensor, proposals: Tensor, min_iou: float = 0.5) -> tuple[int | None, float]:
    """Scan2Cap detection test (FORMATS §3.6.4, §4.4): the proposal that best overlaps a target object.

    Args:
        gt_box: [6] float, the target box.
        proposals: [P, 6] float, the detector's boxes (P may be 0).
        min_iou: inclusive IoU a proposal needs to count as a detection.
    Returns:
        (index of the highest-IoU proposal, or None when its IoU < ``min_iou`` or P = 0; that best IoU, 0.0 if
        P = 0). Ties go to the lowest index.
    """
    gt = _to_tensor("gt_box", gt_box)
    if gt.shape != (6,):
        raise ValueError(f"gt_box: expected shape [6], got {list(gt.shape)}")
    gt = _as_boxes("gt_box", gt[None])
    boxes = _as_boxes("proposals", proposals)
    if boxes.shape[0] == 0:
        return None, 0.0
    dtype = torch.promote_types(gt.dtype, boxes.dtype)
    iou = box_iou_3d(gt.to(dtype), boxes.to(dtype))[0]
    index = int(iou.argmax())
    best = float(iou[index])
    return (index if best >= min_iou else None), best
