"""Alignment pieces: 3D position encoding, head, distillation losses, correspondence loss, grounding head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from threedrs.align.correspondence_loss import correspondence_loss
from threedrs.align.grounding import GroundingHead, object_features, points_in_boxes
from threedrs.align.head import AlignmentHead
from threedrs.align.loss import cosine_loss, distillation_loss, infonce_loss, l2norm_loss
from threedrs.align.posenc import discretise, position_encoding, sinusoidal_3d


def test_discretise_clamps_and_rounds():
    pts = torch.tensor([[0.0, 0.0, 0.0], [20.0, -20.0, 7.0], [0.04, 0.06, -0.149]])
    np_expected = [[150, 150, 50], [300, 0, 100], [150, 151, 49]]
    assert discretise(pts).tolist() == np_expected


def test_sinusoidal_3d_hand_values():
    coords = torch.tensor([[2.0, 3.0, 5.0]])
    enc = sinusoidal_3d(coords, channels=14, temperature=10000.0)  # F = 4 per axis, 2 zero pads
    f = 4
    for axis, value in enumerate((2.0, 3.0, 5.0)):
        for i in range(f):
            freq = 10000.0 ** (-2 * (i // 2) / f)
            expected = math.sin(value * freq) if i % 2 == 0 else math.cos(value * freq)
            assert enc[0, axis * f + i].item() == pytest.approx(expected, abs=1e-12)
    assert enc[0, 12:].abs().max().item() == 0.0


def test_position_encoding_zero_for_invalid_tokens():
    pts = torch.randn(2, 3, 3)
    valid = torch.tensor([[True, False, True], [False, False, True]])
    enc = position_encoding(pts, valid, 48)
    assert enc.shape == (2, 3, 48) and enc.dtype == torch.float32
    assert enc[~valid].abs().max().item() == 0.0 and enc[valid].abs().max().item() > 0
    with pytest.raises(ValueError, match="valid: shape"):
        position_encoding(pts, valid[:, :2], 48)


def test_head_shape_and_layers():
    head = AlignmentHead(32, 2048)
    assert head(torch.randn(2, 3, 4, 4, 32)).shape == (2, 3, 4, 4, 2048)
    assert [m.__class__.__name__ for m in head.net] == ["Linear", "GELU", "Linear"]
    assert head.net[0].out_features == 64
    with pytest.raises(ValueError, match="must be positive"):
        AlignmentHead(0, 8)


def test_l2norm_and_cosine_losses_hand_values_and_masking():
    s = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # [1,1,2,2]
    t = torch.tensor([[[[1.0, 1.0], [0.0, -3.0]]]])
    mask = torch.tensor([[[True, False]]])
    # only the first token: cos = 1/sqrt(2) -> l2norm = 2 - sqrt(2), cosine = 1 - 1/sqrt(2)
    assert l2norm_loss(s, t, mask).shape == (1,)
    assert l2norm_loss(s, t, mask).item() == pytest.approx(2 - math.sqrt(2), rel=1e-6)
    assert cosine_loss(s, t, mask).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    full = torch.ones(1, 1, 2, dtype=torch.bool)
    assert l2norm_loss(s, t, full).item() == pytest.approx((2 - math.sqrt(2) + 4) / 2, rel=1e-6)
    both = distillation_loss("cosine+l2norm")(s, t, mask)
    assert both.item() == pytest.approx(2 - math.sqrt(2) + 1 - 1 / math.sqrt(2), rel=1e-6)


def test_losses_are_zero_for_identical_features_and_never_touch_the_teacher():
    s = torch.randn(2, 3, 2, 2, 16, requires_grad=True)
    t = (s.detach() * 3.0).requires_grad_(True)
    mask = torch.ones(2, 3, 2, 2, dtype=torch.bool)
    for name in ("l2norm", "cosine", "cosine+l2norm"):
        assert distillation_loss(name)(s, t, mask).abs().max().item() == pytest.approx(0.0, abs=1e-6)
    loss = l2norm_loss(s, torch.randn_like(t).requires_grad_(True), mask).mean()
    loss.backward()
    assert s.grad is not None and t.grad is None


def test_losses_are_per_sample_means_and_empty_masks_give_connected_zeros():
    torch.manual_seed(0)
    s, t = torch.randn(2, 2, 2, 2, 4, requires_grad=True), torch.randn(2, 2, 2, 2, 4)
    mask = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, :] = True  # sample 0: 2 valid tokens; sample 1: none
    for fn in (l2norm_loss, cosine_loss, lambda a, b, m: infonce_loss(a, b, m, 0.1)):
        per = fn(s, t, mask)
        assert per.shape == (2,) and per[1].item() == 0.0
        torch.testing.assert_close(per[0], fn(s[:1], t[:1], mask[:1])[0])
    l2norm_loss(s, t, mask).sum().backward()
    assert s.grad[1].abs().sum() == 0 and s.grad[0].abs().sum() > 0


def test_infonce_matches_explicit_formula():
    torch.manual_seed(0)
    s, t = torch.randn(1, 1, 2, 2, 8), torch.randn(1, 1, 2, 2, 8)
    mask = torch.tensor([[[[True, True], [False, True]]]])
    sn = F.normalize(s.reshape(4, 8)[[0, 1, 3]], dim=-1)
    tn = F.normalize(t.reshape(4, 8)[[0, 1, 3]], dim=-1)
    logits = sn @ tn.T / 0.5
    expected = sum(-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(3)) / 3
    assert infonce_loss(s, t, mask, 0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        infonce_loss(s, t, mask, 0.0)
    with pytest.raises(ValueError, match="unknown alignment loss 'mse'"):
        distillation_loss("mse")
    with pytest.raises(ValueError, match="teacher: shape"):
        l2norm_loss(s, t[..., :4], mask)


def _brute_correspondence(f, points, valid, voxel):
    s, h, w, d = f.shape
    f = F.normalize(f.reshape(-1, d), dim=-1)
    keys = torch.floor(points.reshape(-1, 3) / voxel).long()
    frame = torch.arange(s).repeat_interleave(h * w)
    v = valid.reshape(-1)
    pos, neg = [], []
    for i in range(len(f)):
        for j in range(len(f)):
            if i == j or not (v[i] and v[j]):
                continue
            same = bool((keys[i] == keys[j]).all())
            c = float(f[i] @ f[j])
            if same and frame[i] != frame[j]:
                pos.append(c)
            elif not same:
                neg.append(c)
    return 1 - sum(pos) / len(pos) + sum(neg) / len(neg)


def test_correspondence_loss_matches_brute_force_and_backprops():
    torch.manual_seed(1)
    feats = torch.randn(2, 3, 2, 3, 5, requires_grad=True)
    points = torch.randint(0, 3, (2, 3, 2, 3, 3)).double() * 0.1 + 0.05
    valid = torch.rand(2, 3, 2, 3) > 0.2
    loss = correspondence_loss(feats, points, valid, 0.1)
    assert loss.shape == (2,)
    for b in range(2):
        assert loss[b].item() == pytest.approx(_brute_correspondence(feats[b].detach(), points[b], valid[b], 0.1),
                                               rel=1e-5)
    loss.sum().backward()
    assert feats.grad.abs().sum() > 0


def test_points_in_boxes_and_object_features():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [0.1, 0.1, 0.1]])
    valid = torch.tensor([True, True, True, False])
    boxes = torch.tensor([[0.25, 0.25, 0.25, 0.5, 0.5, 0.5], [5.0, 5.0, 5.0, 1.0, 1.0, 1.0]])
    inside = points_in_boxes(pts, valid, boxes)
    assert inside.tolist() == [[True, True, False, False], [False, False, False, False]]
    emb = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [9.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
    feats = object_features(emb, pts, valid, boxes)
    centre = position_encoding(boxes[:, :3].double(), torch.ones(2, dtype=torch.bool), 3)
    torch.testing.assert_close(feats[0], torch.tensor([2.0, 0.0, 0.0]) + centre[0])
    torch.testing.assert_close(feats[1], centre[1])  # empty box: only its centre encoding


def test_grounding_head_scores_and_loss():
    torch.manual_seed(0)
    head = GroundingHead(8, temperature=0.5)
    scores = head(torch.randn(8), torch.randn(3, 8))
    assert scores.shape == (4,) and scores.abs().max() <= 1.0 + 1e-6
    logits = scores / 0.5
    single = -(logits[1] - torch.logsumexp(logits, 0))
    assert head.loss(scores, [1]).item() == pytest.approx(single.item(), rel=1e-6)
    multi = -(torch.logsumexp(logits[[0, 2]], 0) - torch.logsumexp(logits, 0))
    assert head.loss(scores, [0, 2]).item() == pytest.approx(multi.item(), rel=1e-6)
    zero = -(logits[3] - torch.logsumexp(logits, 0))  # zero targets: the no-target entry is the positive
    assert head.loss(scores, []).item() == pytest.approx(zero.item(), rel=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        head.loss(scores, [3])


def test_align_task_from_config_takes_every_setting():
    from threedrs.align.task import AlignTask
    from threedrs.config import load_config
    from threedrs.models.registry import build_adapter

    cfg = load_config(None, ["align.loss=cosine", "align.weight=0.25", "align.layers=[0,-1]", "align.posenc=false",
                             "align.grounding_temperature=0.2", "correspondence.voxel=0.3"])
    task = AlignTask.from_config(build_adapter(cfg.model), 16, cfg)
    assert (task.loss_name, task.weight, task.layers, task.posenc) == ("cosine", 0.25, (0, -1), False)
    assert task.grounding.temperature == 0.2 and task.correspondence_voxel == 0.3
    assert sorted(task.heads) == ["-1", "0"] and task.heads["0"].net[2].out_features == 16
    baseline = AlignTask.from_config(build_adapter(cfg.model), None, cfg, loss="none")
    assert baseline.loss_name == "none" and not baseline.heads
    theirs = load_config(None, ["model.family=llava_onevision", "align.posenc_points=pixel_blocks",
                                "align.object_features=pixel_share"])
    task = AlignTask.from_config(build_adapter(theirs.model), 16, theirs)
    assert (task.posenc_points, task.object_features) == ("pixel_blocks", "pixel_share")
