"""Family-independent checks of the placeholder-token adapters (LLaVA-OneVision, LLaVA-NeXT-Video, InternVL).

Each test file describes its family with a `FamilySpec`: how transformers' OWN forward takes the pixels, the token
string transformers' processor would write for S frames, and an independent re-implementation of the family's
vision path (tower -> layer selection -> projector / pooling). The checks below compare the adapter against these.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

PROMPTS = ["what is on the table", "how many chairs are there in the room"]
ANSWERS = ["a lamp", "two"]


@dataclass
class FamilySpec:
    """make(seed, **kw) -> adapter; hf_pixels(adapter, pixels [B,S,3,s,s]) -> kwargs of the HF model's forward;
    visual_text(adapter, S) -> the processor-style expanded placeholder string for S frames;
    grid_positions(adapter, ids [L], S) -> grid-token positions found from the ids alone;
    manual_grid(adapter, pixels) -> [B, S, h, w, D] projected features computed without the adapter;
    grid(adapter) -> (h, w) from the config by the family's formula."""

    make: Callable
    hf_pixels: Callable
    visual_text: Callable
    grid_positions: Callable
    manual_grid: Callable
    grid: Callable


_SHARED: dict[int, object] = {}


def shared(spec: FamilySpec):
    """One tiny adapter (seed 0) per family, reused by the checks that leave the model untouched."""
    if id(spec) not in _SHARED:
        _SHARED[id(spec)] = spec.make()
    return _SHARED[id(spec)]


def frames(b: int = 2, s: int = 2, h: int = 30, w: int = 44, seed: int = 0) -> torch.Tensor:
    """Random frames [B, S, 3, H, W] in [0, 1] (non-square)."""
    return torch.rand(b, s, 3, h, w, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def llm_inputs(adapter):
    """Capture the `inputs_embeds` [B, L, D] the LLM receives (list of tensors, one per call)."""
    seen = []

    def hook(_module, _args, kwargs):
        seen.append(kwargs["inputs_embeds"].detach().clone())

    handle = adapter.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def expected_ids(adapter, spec: FamilySpec, s: int, prompt: str, answer: str | None) -> list[int]:
    """Token ids from tokenising the WHOLE processor-style string at once (as transformers' processors do): the
    chat template's rendering of the conversation (with the answer: cut after its end-of-turn marker, or closed
    with the eos when the template writes none), its `<video>` replaced by the family's expansion."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = adapter.tokenizer.apply_chat_template(messages, chat_template=adapter.prompt.template.text, tokenize=False,
                                                 add_generation_prompt=answer is None)
    if answer is not None:
        text = text.rstrip()
        text = text if text.endswith(adapter.prompt.end) else text + adapter.tokenizer.eos_token
    assert text.count("<video>") == 1
    return adapter.tokenizer(text.replace("<video>", spec.visual_text(adapter, s)))["input_ids"]


def check_layout(spec: FamilySpec) -> None:
    adapter = shared(spec)
    fr = frames()
    out = adapter(fr, PROMPTS, ANSWERS)
    h, w = spec.grid(adapter)
    assert adapter.token_grid(30, 44) == (h, w)
    for i in range(2):
        ids = expected_ids(adapter, spec, 2, PROMPTS[i], ANSWERS[i])
        got = out.input_ids[i]
        assert got[: len(ids)].tolist() == ids
        assert (out.extras["attention_mask"][i] == (torch.arange(len(got)) < len(ids)).long()).all()
        positions = spec.grid_positions(adapter, torch.tensor(ids), 2)
        assert len(positions) == 2 * h * w
        assert out.extras["visual_index"][i].tolist() == positions


def check_hidden_matches_hf(spec: FamilySpec) -> None:
    """Adapter states == transformers' own forward (its placeholder scatter) gathered at independent positions."""
    adapter = shared(spec)
    fr = frames()
    layers = (-1, 0, 1, -2)
    out = adapter(fr, PROMPTS, ANSWERS, layers=layers)
    h, w = spec.grid(adapter)
    ref = adapter.model(input_ids=out.input_ids, attention_mask=out.extras["attention_mask"],
                        output_hidden_states=True, **spec.hf_pixels(adapter, adapter.pixels(fr)))
    assert len(ref.hidden_states) == adapter.num_layers + 1
    for i in range(2):
        pos = torch.tensor(spec.grid_positions(adapter, out.input_ids[i], 2))
        for k in layers:
            want = ref.hidden_states[k][i, pos].reshape(2, h, w, -1)
            torch.testing.assert_close(out.visual.hidden[k][i], want, rtol=1e-4, atol=1e-5)
    n = int(out.extras["attention_mask"][0].sum())
    torch.testing.assert_close(out.last_hidden[0, :n], ref.hidden_states[-1][0, :n], rtol=1e-4, atol=1e-5)


def check_last_layer_is_normed(spec: FamilySpec) -> None:
    """hidden[-1] = final norm applied to the last decoder layer's output (captured by a hook)."""
    adapter = shared(spec)
    captured = []
    lm = adapter.model.model.language_model
    handle = lm.layers[-1].register_forward_hook(lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o))
    out = adapter(frames(), PROMPTS, layers=(-1, adapter.num_layers))
    handle.remove()
    normed = lm.norm(captured[0])
    idx = out.extras["visual_index"]
    want = normed[torch.arange(2)[:, None], idx].reshape(out.visual.hidden[-1].shape)
    torch.testing.assert_close(out.visual.hidden[-1], want)
    torch.testing.assert_close(out.visual.hidden[adapter.num_layers], want)
    assert not torch.allclose(captured[0], normed)


def check_vision_path(spec: FamilySpec) -> None:
    """The embeddings entering the LLM at the grid positions == the independent tower + projector + pooling."""
    adapter = shared(spec)
    fr = frames()
    with llm_inputs(adapter) as seen:
        out = adapter(fr, PROMPTS)
    want = spec.manual_grid(adapter, adapter.pixels(fr))
    for i in range(2):
        pos = torch.tensor(spec.grid_positions(adapter, out.input_ids[i], 2))
        torch.testing.assert_close(seen[0][i, pos].reshape(want[i].shape), want[i], rtol=1e-4, atol=1e-5)


def localise_vision(adapter) -> None:
    """Zero the residual branches of the vision encoder so every patch feature depends on its own pixels only."""
    with torch.no_grad():
        for name, p in adapter.model.model.vision_tower.named_parameters():
            if name.split(".")[-2] in ("out_proj", "fc2", "projection_layer"):
                p.zero_()


def check_region_routing(spec: FamilySpec, height: int = 37, width: int = 53) -> None:
    """Changing the pixels inside token (f, i, j)'s footprint changes the LLM input most at grid cell (f, i, j) and
    leaves the other frame untouched."""
    adapter = spec.make()
    localise_vision(adapter)
    base = torch.full((1, 2, 3, height, width), 0.5)
    boxes = adapter.footprints(height, width)
    h, w = boxes.shape[:2]
    cells = [(0, 0, 0), (1, h - 1, w - 1), (0, h - 1, 0), (1, 0, w - 1), (0, h // 2, w // 2 + 1)]
    with llm_inputs(adapter) as seen:
        adapter(base, PROMPTS[:1])
        for f, i, j in cells:
            x0, y0, x1, y1 = boxes[i, j].tolist()
            fr = base.clone()
            fr[0, f, :, y0:y1, x0:x1] = torch.tensor([0.95, 0.05, 0.3])[:, None, None]
            adapter(fr, PROMPTS[:1])
    idx = spec.grid_positions(adapter, adapter(base, PROMPTS[:1]).input_ids[0], 2)
    ref = seen[0][0, idx].reshape(2, h, w, -1)
    for (f, i, j), emb in zip(cells, seen[1:]):
        change = (emb[0, idx].reshape(2, h, w, -1) - ref).norm(dim=-1)
        assert change[1 - f].max() == 0
        assert divmod(int(change[f].argmax()), w) == (i, j)


def check_footprints_tile(adapter, height: int, width: int) -> None:
    """Each pixel of the frame is in exactly one box; rows / columns of boxes share their edges."""
    boxes = adapter.footprints(height, width)
    h, w = adapter.token_grid(height, width)
    assert boxes.shape == (h, w, 4) and boxes.dtype == torch.int64
    count = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in boxes.reshape(-1, 4).tolist():
        assert x1 > x0 and y1 > y0
        count[y0:y1, x0:x1] += 1
    assert (count == 1).all()
    assert (boxes[:, :, 1] == boxes[:, :1, 1]).all() and (boxes[:, :, 0] == boxes[:1, :, 0]).all()


def check_loss_is_answer_ce(spec: FamilySpec) -> None:
    """lm_loss == CE of transformers' full logits over the answer (+ end marker) tokens found independently."""
    adapter = shared(spec)
    fr = frames()
    out = adapter(fr, PROMPTS, ANSWERS)
    logits = adapter.model(input_ids=out.input_ids, attention_mask=out.extras["attention_mask"],
                           **spec.hf_pixels(adapter, adapter.pixels(fr))).logits
    terms = []
    for i in range(2):
        answer = adapter.tokenizer(adapter.prompt.answer_lead + ANSWERS[i] + adapter.prompt.end,
                                   add_special_tokens=False)["input_ids"]
        end = int(out.extras["attention_mask"][i].sum())
        assert out.input_ids[i, end - len(answer):end].tolist() == answer
        for t in range(end - len(answer), end):
            terms.append(-torch.log_softmax(logits[i, t - 1].float(), -1)[out.input_ids[i, t]])
    torch.testing.assert_close(out.lm_loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def check_gradients_and_parts(spec: FamilySpec) -> None:
    adapter = spec.make()
    parts = adapter.parts()
    assert set(parts) == {"vision", "projector", "llm"}
    ids = [id(p) for ps in parts.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in adapter.model.parameters()}
    out = adapter(frames(), PROMPTS, ANSWERS)
    out.lm_loss.backward()
    for name in ("llm", "projector", "vision"):
        grads = [p.grad for p in parts[name] if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name


def check_offsets(spec: FamilySpec) -> None:
    """Zero offsets change nothing; offsets are added exactly at the grid positions and nowhere else."""
    adapter = shared(spec)
    fr = frames()
    h, w = spec.grid(adapter)
    with llm_inputs(adapter) as seen:
        plain = adapter(fr, PROMPTS, ANSWERS)
        zero = adapter(fr, PROMPTS, ANSWERS, visual_offsets=torch.zeros(2, 2, h, w, adapter.hidden_size))
        offsets = torch.randn(2, 2, h, w, adapter.hidden_size, generator=torch.Generator().manual_seed(3))
        moved = adapter(fr, PROMPTS, ANSWERS, visual_offsets=offsets)
    torch.testing.assert_close(zero.visual.hidden[-1], plain.visual.hidden[-1], rtol=0, atol=0)
    torch.testing.assert_close(zero.lm_loss, plain.lm_loss, rtol=0, atol=0)
    assert (moved.visual.hidden[-1] - plain.visual.hidden[-1]).abs().amax(dim=-1).min() > 0
    delta = seen[2] - seen[0]
    for i in range(2):
        pos = spec.grid_positions(adapter, plain.input_ids[i], 2)
        torch.testing.assert_close(delta[i, pos].reshape(2, h, w, -1), offsets[i], rtol=1e-5, atol=1e-5)
        others = torch.ones(delta.shape[1], dtype=torch.bool)
        others[pos] = False
        assert delta[i, others].abs().max() == 0


def check_batch_equals_singles(spec: FamilySpec) -> None:
    adapter = shared(spec)
    fr = frames()
    both = adapter(fr, PROMPTS, ANSWERS, layers=(-1, 1))
    weights, losses = [], []
    for i in range(2):
        one = adapter(fr[i:i + 1], PROMPTS[i:i + 1], ANSWERS[i:i + 1], layers=(-1, 1))
        for k in (-1, 1):
            torch.testing.assert_close(both.visual.hidden[k][i], one.visual.hidden[k][0], rtol=1e-4, atol=1e-5)
        n = one.input_ids.shape[1]
        torch.testing.assert_close(both.last_hidden[i, :n], one.last_hidden[0], rtol=1e-4, atol=1e-5)
        weights.append(int((one.extras["labels"][0] != -100).sum()))
        losses.append(one.lm_loss)
    mean = sum(w * l for w, l in zip(weights, losses)) / sum(weights)
    torch.testing.assert_close(both.lm_loss, mean, rtol=1e-5, atol=1e-6)


def greedy_reference(adapter, spec: FamilySpec, fr: torch.Tensor, prompt: str, steps: int) -> str:
    """Greedy decoding by repeated full forwards of transformers' own model (no cache)."""
    ids = torch.tensor([expected_ids(adapter, spec, fr.shape[1], prompt, None)])
    pixels = spec.hf_pixels(adapter, adapter.pixels(fr))
    stops = {adapter.tokenizer.convert_tokens_to_ids(adapter.prompt.end), adapter.tokenizer.eos_token_id}
    new = []
    for _ in range(steps):
        logits = adapter.model(input_ids=ids, **pixels).logits[0, -1]
        logits[adapter.placeholder_ids()] = -float("inf")
        token = int(logits.argmax())
        if token in stops:
            break
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return adapter.tokenizer.decode(new, skip_special_tokens=True).strip()


def check_generate(spec: FamilySpec) -> None:
    adapter = shared(spec)
    fr = frames()
    first = adapter.generate(fr, PROMPTS, max_new_tokens=4)
    assert isinstance(first, list) and len(first) == 2 and all(isinstance(t, str) for t in first)
    assert adapter.generate(fr, PROMPTS, max_new_tokens=4) == first
    for i in range(2):
        assert adapter.generate(fr[i:i + 1], PROMPTS[i:i + 1], max_new_tokens=4) == [first[i]]
        assert first[i] == greedy_reference(adapter, spec, fr[i:i + 1], PROMPTS[i], 4)


def check_round_trip(spec: FamilySpec, tmp_path: Path) -> None:
    adapter = spec.make(seed=1)
    adapter.save_pretrained(tmp_path / "ckpt")
    loaded = type(adapter).from_pretrained(tmp_path / "ckpt")
    fr = frames()
    a, b = adapter(fr, PROMPTS, ANSWERS), loaded(fr, PROMPTS, ANSWERS)
    assert torch.equal(a.input_ids, b.input_ids)
    torch.testing.assert_close(a.visual.hidden[-1], b.visual.hidden[-1], rtol=0, atol=0)
    torch.testing.assert_close(a.lm_loss, b.lm_loss, rtol=0, atol=0)
    assert adapter.generate(fr, PROMPTS, 3) == loaded.generate(fr, PROMPTS, 3)


def check_tiny_deterministic(spec: FamilySpec) -> None:
    state = torch.random.get_rng_state()
    a, b, c = spec.make(seed=0), spec.make(seed=0), spec.make(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def check_pixels_match_processor(adapter, directory: Path) -> None:
    """Resize + normalisation == PIL bicubic resize of the frame with the mean / std of the saved processor config,
    and == the family's PIL image processor (its first tile), within interpolation rounding (smooth frame,
    downscaled)."""
    adapter.image_processor.save_pretrained(directory)
    config = json.loads((directory / "preprocessor_config.json").read_text())
    mean = torch.tensor(config["image_mean"]).view(3, 1, 1)
    std = torch.tensor(config["image_std"]).view(3, 1, 1)
    yy, xx = np.mgrid[0:150, 0:200]
    img = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0), 40 + 0.5 * (xx + yy)], -1)
    img = img.astype(np.uint8)
    side = adapter.pixels(torch.zeros(1, 1, 3, 4, 4)).shape[-1]
    pil = np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
    want = (torch.from_numpy(pil).permute(2, 0, 1) - mean) / std
    frame = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None, None]
    got = adapter.pixels(frame)[0, 0]
    tol = 1.0 / 255 / float(std.min())
    assert (got - want).abs().max() < tol
    processed = adapter.image_processor(Image.fromarray(img), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, processed.reshape(-1, 3, side, side)[0], rtol=0, atol=tol)


def check_bad_inputs(spec: FamilySpec, tmp_path: Path) -> None:
    adapter = shared(spec)
    fr = frames()
    h, w = spec.grid(adapter)
    with pytest.raises(ValueError, match="frames"):
        adapter(fr[0], PROMPTS)
    with pytest.raises(ValueError, match="frames"):
        adapter((fr * 255).to(torch.uint8), PROMPTS)
    with pytest.raises(ValueError, match=r"frames: values must lie in \[0, 1\]"):
        adapter(fr * 2, PROMPTS)
    with pytest.raises(ValueError, match="prompts: expected 2 entries"):
        adapter(fr, PROMPTS[:1])
    with pytest.raises(ValueError, match="prompts: expected a list"):
        adapter(fr, "one prompt")
    with pytest.raises(ValueError, match="answers: expected 2 entries"):
        adapter(fr, PROMPTS, ANSWERS[:1])
    with pytest.raises(ValueError, match="visual_offsets: expected shape"):
        adapter(fr, PROMPTS, visual_offsets=torch.zeros(2, 2, w + 1, h, adapter.hidden_size))
    with pytest.raises(ValueError, match="layers"):
        adapter(fr, PROMPTS, layers=(adapter.num_layers + 1,))
    with pytest.raises(ValueError, match="max_new_tokens"):
        adapter.generate(fr, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="frame size: expected positive"):
        adapter.footprints(0, 44)
    with pytest.raises(ValueError, match=f"frame size: {h - 1} x 44 is smaller than the {h} x {w} token grid"):
        adapter.footprints(h - 1, 44)
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        type(adapter).from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        type(adapter).from_pretrained(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match=f"model_type is 'qwen2_vl', expected '{adapter.model_type}'"):
        type(adapter).from_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="prompts: the text must not contain the visual placeholder '<video>'"):
        adapter(fr, ["look at <video>", "x"])


def bilinear_half(x: torch.Tensor) -> torch.Tensor:
    """[n, n, D] -> [ceil(n/2), ceil(n/2), D] bilinear resize (align_corners=False), written out by hand."""
    n = x.shape[0]
    m = -(-n // 2)

    def taps(o: int) -> list[tuple[int, float]]:
        src = max((o + 0.5) * n / m - 0.5, 0.0)
        i0 = int(src)
        i1 = min(i0 + 1, n - 1)
        frac = src - i0
        return [(i0, 1 - frac), (i1, frac)]

    out = torch.zeros(m, m, x.shape[-1])
    for i in range(m):
        for j in range(m):
            for r, wr in taps(i):
                for c, wc in taps(j):
                    out[i, j] += wr * wc * x[r, c]
    return out


def real_size_grid(adapter_cls, config, tokenizer, processor, frames_count: int = 2) -> tuple:
    """Build an adapter over a full-size config on the meta device (no memory, no compute) and return
    (token_grid, encoder grid shape, extra tokens) for meta pixels of the real input size."""
    with torch.device("meta"):
        model = adapter_cls.model_class(config)
    adapter = adapter_cls(model, tokenizer, processor)
    side = adapter.pixels(torch.zeros(1, 1, 3, 2, 2)).shape[-1]
    grid, extra, _ = adapter._encode(torch.empty(1, frames_count, 3, side, side, device="meta"))
    return adapter.token_grid(968, 1296), tuple(grid.shape[2:4]), extra.shape[1], side


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """[n, n, D] -> [n // 2, n // 2, D] mean of each 2x2 block, written out."""
    m = x.shape[0] // 2
    return torch.stack([torch.stack([x[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(0, 1)) for j in range(m)])
                        for i in range(m)])


def shuffle_2x2(x: torch.Tensor) -> torch.Tensor:
    """[n, n, C] -> [n // 2, n // 2, 4C]: token (i, j) = patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1)."""
    m = x.shape[0] // 2
    return torch.stack([torch.stack([torch.cat([x[2 * i, 2 * j], x[2 * i, 2 * j + 1], x[2 * i + 1, 2 * j],
                                                x[2 * i + 1, 2 * j + 1]]) for j in range(m)]) for i in range(m)])
