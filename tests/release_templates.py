"""Chat templates in the form the released checkpoints ship them, written for the release-shaped test folders.

Each renders what the release's template renders (checked facts: the released files and transformers' conversion
scripts); they are written here, not copied. Messages follow the transformers convention: `{"role": ...,
"content": str | [{"type": "image"} | {"type": "video"} | {"type": "text", "text": ...}]}`.

- QWEN_VL: Qwen2-VL / Qwen2.5-VL (`chat_template.json` and `tokenizer_config.json`): ChatML with a default
  system turn ("You are a helpful assistant.") when the first message is not a system message; each image
  `<|vision_start|><|image_pad|><|vision_end|>`, each video `<|vision_start|><|video_pad|><|vision_end|>`,
  in content order.
- QWEN2_INSTRUCT: Qwen2-Instruct's text-only template, which the llava-hf OneVision conversions keep in their
  `tokenizer_config.json` (their processor's `chat_template.json` is LLAVA_ONEVISION).
- LLAVA_ONEVISION: ChatML without a system turn; per message all images (`<image>\\n`), then all videos
  (`<video>\\n`), then the text.
- LLAVA_NEXT_VIDEO_VICUNA: Vicuna: `USER: ` + `<image>\\n` / `<video>\\n` + text + ` `, assistant turns
  `ASSISTANT: ` + text + ` `, generation prompt `ASSISTANT:`; no end-of-turn marker.
- INTERNVL_HF: the transformers-native InternVL (`-hf`) template: ChatML without a system turn; image
  `<IMG_CONTEXT>\\n`, video `<video>\\n`, text as is, in content order.
"""

QWEN_VL = (
    "{%- set seen = namespace(images=0, videos=0) -%}"
    "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set seen.images = seen.images + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ seen.images ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set seen.videos = seen.videos + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ seen.videos ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

QWEN2_INSTRUCT = (
    "{%- for m in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAVA_ONEVISION = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- for part in m['content'] | selectattr('type', 'equalto', 'image') -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in m['content'] | selectattr('type', 'equalto', 'video') -%}{{- '<video>\\n' -}}{%- endfor -%}"
    "{%- for part in m['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{%- if m['role'] == 'assistant' -%}{% generation %}{{- part['text'] -}}{% endgeneration %}"
    "{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAVA_NEXT_VIDEO_VICUNA = (
    "{%- for m in messages -%}"
    "{%- if m['role'] != 'system' -%}{{- m['role'].upper() + ': ' -}}{%- endif -%}"
    "{%- for part in m['content'] | selectattr('type', 'equalto', 'image') -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in m['content'] | selectattr('type', 'equalto', 'video') -%}{{- '<video>\\n' -}}{%- endfor -%}"
    "{%- for part in m['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{%- if m['role'] == 'assistant' -%}{% generation %}{{- part['text'] + ' ' -}}{% endgeneration %}"
    "{%- else -%}{{- part['text'] + ' ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

INTERNVL_HF = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<video>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
