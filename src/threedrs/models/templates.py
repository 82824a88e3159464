"""Chat templates threedrs writes itself: the family defaults, and the Video-3D LLM / 3DRS prompt.

`FAMILY_TEMPLATES` are used only for checkpoints that ship none (the tiny random models);
`VIDEO3DLLM_TEMPLATE` is the prompt of the authors' checkpoints, written into a folder from
`threedrs convert-official` (convert_official.py) as its `chat_template.jinja`.

Each family default renders what the family's released checkpoint renders (Jinja, transformers'
`apply_chat_template` conventions; content items `{"type": "image" | "video" | "text"}`):
- Qwen2-VL / Qwen2.5-VL: ChatML with the default system turn "You are a helpful assistant.", each image as
  `<|vision_start|><|image_pad|><|vision_end|>`, each video with `<|video_pad|>`;
- LLaVA-OneVision (llava-hf): ChatML without a system turn, images then videos (`<image>\\n`, `<video>\\n`), then text;
- LLaVA-NeXT-Video (llava-hf, Vicuna): `USER: <video>\\n{text} ASSISTANT:`, answers `{text} ` (no end marker: the
  prompt builder closes answers with the tokenizer's eos);
- InternVL (-hf): ChatML without a system turn, `<IMG_CONTEXT>\\n` per image, `<video>\\n` per video.
"""

_QWEN_VL = (
    "{%- set seen = namespace(images=0, videos=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set seen.images = seen.images + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ seen.images ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' -%}{%- set seen.videos = seen.videos + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ seen.videos ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_LLAVA_ONEVISION = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'video' -%}{{- '<video>\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_VICUNA_VIDEO = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{- message['role'] | upper ~ ': ' -}}{%- endif -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'video' -%}{{- '<video>\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] ~ ' ' -}}{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

_INTERNVL = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<video>\\n' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

FAMILY_TEMPLATES = {"qwen2_vl": _QWEN_VL, "qwen2_5_vl": _QWEN_VL, "llava_onevision": _LLAVA_ONEVISION,
                    "llava_next_video": _VICUNA_VIDEO, "internvl": _INTERNVL}

# The authors' prompt (Video-3D LLM llava/eval/model_*.py `preprocess_qwen`, conversation "qwen_1_5"): Qwen's
# system turn, then the user turn with the visual placeholder and a newline before the text; answers end with
# <|im_end|>.
VIDEO3DLLM_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] in ('image', 'video') -%}"
    "{{- '<' + item['type'] + '>\\n' -}}"
    "{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
