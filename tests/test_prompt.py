"""The prompt builder against release-shaped checkpoints: the token ids the adapters feed the model equal the
RELEASED chat template's rendering of the same conversation with the visual placeholder expanded as the family's
Hugging Face processor expands it (counts taken from the folder's own processor files), tokenised as the processor
tokenises it; labels cover the answer and its end marker only. Bad folders fail with one line, before any weights
load (the weights are deleted from those copies)."""

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from threedrs.config import ModelConfig
from threedrs.models.prompt import ChatTemplate, read_chat_template
from threedrs.models.registry import build_adapter

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video", "internvl"]
PROMPTS = ["What is on the table?", "How many chairs are there in the room?"]
ANSWERS = ["a lamp", "two"]
TEMPLATE_FILE = {"qwen2_vl": "chat_template.json", "qwen2_5_vl": "chat_template.json",
                 "llava_onevision": "chat_template.json", "llava_next_video": "chat_template.json",
                 "internvl": "chat_template.jinja"}


def released_template(folder, family) -> str:
    path = folder / TEMPLATE_FILE[family]
    return json.loads(path.read_text())["chat_template"] if path.suffix == ".json" else path.read_text()


def processor_expansion(folder, family, frames: int) -> tuple[str, str]:
    """(placeholder written by the template, its replacement) as transformers' processor computes it for `frames`
    frames of the folder's default input size, from the folder's own processor files."""
    proc = json.loads((folder / "processor_config.json").read_text()) if family.startswith(("llava", "internvl")) \
        else {}
    if family.startswith("qwen"):  # one image per frame; Qwen2VLProcessor: grid_thw.prod() // merge_size**2 pads
        image = torch.zeros(3, 392, 392).numpy()
        thw = Qwen2VLImageProcessorPil.from_pretrained(folder)(images=[image], do_rescale=False,
                                                               return_tensors="pt")["image_grid_thw"][0]
        return "<|image_pad|>", "<|image_pad|>" * int(thw.prod() // 4)
    if family == "llava_onevision":  # (frames * ceil(sqrt(num_image_tokens) / 2)**2) + 1 newline
        side = math.ceil(int(math.sqrt(proc["num_image_tokens"])) / 2)
        return "<video>", "<video>" * (frames * side * side + 1)
    if family == "llava_next_video":  # (336 // patch_size)**2 // 4 per frame, no newline
        per_frame = (336 // proc["patch_size"]) ** 2 // 4
        return "<video>", "<video>" * (per_frame * frames)
    seq = proc["image_seq_length"]  # InternVLProcessor.replace_video_token
    return "<video>", "\n".join(f"Frame{i + 1}: <img>{'<IMG_CONTEXT>' * seq}</img>" for i in range(frames))


def reference_ids(folder, family, tokenizer, frames: int, prompt: str, answer: str | None) -> list[int]:
    """Render the conversation with the released template, expand, tokenise the whole text (processor style)."""
    visual = [{"type": "image"}] * frames if family.startswith("qwen") else [{"type": "video"}]
    messages = [{"role": "user", "content": visual + [{"type": "text", "text": prompt}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = tokenizer.apply_chat_template(messages, chat_template=released_template(folder, family), tokenize=False,
                                         add_generation_prompt=answer is None)
    if answer is not None:  # ChatML: cut after the answer's <|im_end|>; Vicuna writes no end marker: eos
        text = text[:text.rindex("<|im_end|>") + 10] if "<|im_end|>" in text else text.rstrip() + "</s>"
    placeholder, expansion = processor_expansion(folder, family, frames)
    text = text.replace(placeholder, expansion)
    return tokenizer(text, add_special_tokens=not text.startswith(tokenizer.bos_token or "\0"))["input_ids"]


@pytest.fixture(scope="module")
def adapters(release_checkpoint):
    return {f: build_adapter(ModelConfig(family=f, path=str(release_checkpoint(f)))) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_equal_released_template_plus_processor_expansion(release_checkpoint, adapters, family):
    folder, adapter = release_checkpoint(family), adapters[family]
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert adapter.prompt.template.source.endswith(TEMPLATE_FILE[family])
    frames = torch.rand(2, 2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    out = adapter(frames, PROMPTS, ANSWERS)
    for i in range(2):
        want = reference_ids(folder, family, tokenizer, 2, PROMPTS[i], ANSWERS[i])
        n = int(out.extras["attention_mask"][i].sum())
        assert out.input_ids[i, :n].tolist() == want
        prompt = reference_ids(folder, family, tokenizer, 2, PROMPTS[i], None)
        labels = out.extras["labels"][i, :n]
        assert (labels[:len(prompt)] == -100).all() and labels[len(prompt):].tolist() == want[len(prompt):]
        assert tokenizer.decode(want[len(prompt):]).strip() in (ANSWERS[i] + "<|im_end|>", ANSWERS[i] + "</s>")
    grid = (2, 2) + adapter.token_grid(48, 64) + (adapter.hidden_size,)
    assert out.visual.hidden[-1].shape == grid
    # generation prompts (left padded) are the released rendering too
    batch = (adapter.build_inputs(frames, PROMPTS, None, "left")[0] if family.startswith("qwen")
             else adapter.prompt.batch(adapter._visual_layout(2), PROMPTS, None, "left"))
    for i in range(2):
        prompt = reference_ids(folder, family, tokenizer, 2, PROMPTS[i], None)
        assert batch.input_ids[i, -len(prompt):].tolist() == prompt


def test_each_family_gets_its_own_turn_format(adapters):
    """Vicuna (NeXT-Video) is not ChatML; OneVision and InternVL have no system turn; Qwen keeps its default one."""
    frames = torch.rand(1, 1, 3, 48, 64)
    text = {f: a.tokenizer.decode(a(frames, PROMPTS[:1]).input_ids[0]) for f, a in adapters.items()}
    vicuna = text["llava_next_video"]
    assert vicuna.startswith("<s>") and vicuna[3:].lstrip().startswith("USER: <video>") and "<|im_start|>" not in vicuna
    assert text["llava_next_video"].endswith(PROMPTS[0] + " ASSISTANT:")
    for family in ("llava_onevision", "internvl"):
        assert text[family].startswith("<|im_start|>user\n") and "system" not in text[family]
    for family in ("qwen2_vl", "qwen2_5_vl"):
        assert text[family].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def _copy_without_weights(folder, tmp_path):
    copy = tmp_path / "checkpoint"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    return copy


def _drop_token(folder, token):
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != token]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if v["content"] != token}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family,token", [("qwen2_vl", "<|image_pad|>"), ("llava_onevision", "<video>"),
                                          ("internvl", "<IMG_CONTEXT>")])
def test_tokenizer_without_the_placeholder_is_refused_before_loading(release_checkpoint, tmp_path, family, token):
    folder = _copy_without_weights(release_checkpoint(family), tmp_path)
    _drop_token(folder, token)
    with pytest.raises(ValueError, match=f"{folder}: tokenizer.*{token}"):
        build_adapter(ModelConfig(family=family, path=str(folder)))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_next_video", "internvl"])
def test_template_dropping_the_placeholder_is_refused_before_loading(release_checkpoint, tmp_path, family):
    folder = _copy_without_weights(release_checkpoint(family), tmp_path)
    drops = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'text' %}"
             "{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    name = TEMPLATE_FILE[family]
    (folder / name).write_text(json.dumps({"chat_template": drops}) if name.endswith(".json") else drops)
    with pytest.raises(ValueError, match=f"{folder / name}: the chat template writes the visual placeholder"):
        build_adapter(ModelConfig(family=family, path=str(folder)))


def test_text_only_tokenizer_template_is_refused_before_loading(release_checkpoint, tmp_path):
    """A OneVision folder without its processor template falls back to tokenizer_config.json's Qwen2-Instruct
    template, which cannot render a video: one line naming that file."""
    folder = _copy_without_weights(release_checkpoint("llava_onevision"), tmp_path)
    (folder / "chat_template.json").unlink()
    with pytest.raises(ValueError, match=f"{folder / 'tokenizer_config.json'} .chat_template.: the chat template "
                                         "cannot render a turn with video content items"):
        build_adapter(ModelConfig(family="llava_onevision", path=str(folder)))


def test_folder_of_another_family_is_refused(release_checkpoint):
    folder = release_checkpoint("qwen2_vl")
    with pytest.raises(ValueError, match=r"config.json: model_type is 'qwen2_vl', but model.family is 'internvl'"):
        build_adapter(ModelConfig(family="internvl", path=str(folder)))


def test_template_order_follows_transformers(tmp_path):
    """processor_config.json's key, else chat_template.json, else chat_template.jinja, else the tokenizer's."""
    tok = SimpleNamespace(chat_template="from tokenizer")
    assert read_chat_template(tmp_path, tok, "internvl").text == "from tokenizer"
    (tmp_path / "chat_template.jinja").write_text("from jinja")
    jinja = tmp_path / "chat_template.jinja"
    assert read_chat_template(tmp_path, tok, "internvl") == ChatTemplate("from jinja", str(jinja))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "from json"}))
    assert read_chat_template(tmp_path, tok, "internvl").text == "from json"
    (tmp_path / "processor_config.json").write_text(json.dumps({"chat_template": "from processor"}))
    assert read_chat_template(tmp_path, tok, "internvl").text == "from processor"
    assert "default internvl" in read_chat_template(None, SimpleNamespace(chat_template=None), "internvl").source
    (tmp_path / "chat_template.json").write_text("[]")
    (tmp_path / "processor_config.json").unlink()
    with pytest.raises(ValueError, match="chat_template.json: expected a JSON object"):
        read_chat_template(tmp_path, tok, "internvl")


def test_saved_adapter_keeps_the_template_it_used(adapters, tmp_path):
    """OneVision's folder has two templates; a saved adapter writes the one it used (chat_template.jinja)."""
    adapter = adapters["llava_onevision"]
    adapter.save_pretrained(tmp_path)
    loaded = type(adapter).from_pretrained(tmp_path)
    assert loaded.prompt.template.text == adapter.prompt.template.text
    assert loaded.prompt.template.source.endswith("chat_template.jinja")


def test_cross_entropy_without_supervised_tokens_is_refused():
    from threedrs.models.base import IGNORE_INDEX, answer_cross_entropy

    labels = torch.full((2, 5), IGNORE_INDEX)
    with pytest.raises(ValueError, match="answers: no answer tokens to supervise"):
        answer_cross_entropy(torch.nn.Linear(4, 7), torch.zeros(2, 5, 4), labels)


def test_templates_whose_answer_cannot_be_placed_are_refused():
    from threedrs.models.prompt import PromptBuilder
    from threedrs.models.templates import FAMILY_TEMPLATES
    from threedrs.models.tiny import offline_tokenizer

    tok = offline_tokenizer(["<|endoftext|>", "<video>"], eos_token="<|endoftext|>")
    moved = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{{ '<video>' if c['type'] == "
             "'video' else c['text'] }}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}Answer: {% endif %}")
    with pytest.raises(ValueError, match="moved: the assistant turn does not continue the generation prompt"):
        PromptBuilder(tok, ChatTemplate(moved, "moved"), "<video>", "video")
    vicuna = ChatTemplate(FAMILY_TEMPLATES["llava_next_video"], "vicuna")
    assert PromptBuilder(tok, vicuna, "<video>", "video").end == "<|endoftext|>"
    tok.eos_token = None
    with pytest.raises(ValueError, match="vicuna: the template closes no assistant turn and the tokenizer has no eos"):
        PromptBuilder(tok, vicuna, "<video>", "video")


@pytest.mark.parametrize("family", FAMILIES)
def test_loading_checks_the_tokenizer_and_builds_the_prompt_once(release_checkpoint, family, monkeypatch):
    """from_pretrained checks the tokenizer and the template before the weights load, and the adapter keeps that
    prompt builder: neither runs again in the constructor."""
    from threedrs.models import prompt as prompt_module

    built, checked = [], []
    real_init = prompt_module.PromptBuilder.__init__
    monkeypatch.setattr(prompt_module.PromptBuilder, "__init__",
                        lambda self, *args: built.append(1) or real_init(self, *args))
    adapter = build_adapter(ModelConfig(family=family))  # the tiny model's class, patched below
    cls = type(adapter)
    real_check = cls.check_tokenizer.__func__
    monkeypatch.setattr(cls, "check_tokenizer", classmethod(lambda c, *args: checked.append(1) or real_check(c, *args)))
    built.clear()
    loaded = build_adapter(ModelConfig(family=family, path=str(release_checkpoint(family))))
    assert len(built) == 1 and len(checked) == 1
    assert loaded.prompt.template.source.endswith(TEMPLATE_FILE[family])
