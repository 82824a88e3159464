"""Prompt texts in Video-3D LLM / 3DRS's own form (`data.prompts=video3dllm`).

Their processed files write each human turn as `<image>` followed by the text (FORMATS §3.6.2-3.6.6): directly for
ScanRefer and Multi3DRefer (`"<image>Identify the object ..."`), after a space for Scan2Cap, ScanQA and SQA3D
(`"<image> Given an object ..."`). Their evaluation scripts tokenise the `<image>` placeholder, a newline, then that
text, so the leading space is part of what the model reads. Their training (`add_spatial_instruction=True`) writes
`<image>`, a newline, the spatial instruction, a newline, then the same text; their evaluation scripts put the
instruction only into the logged prompt, not into the model's input. The chat template that writes the visual
placeholder and its newline is the model folder's (`threedrs convert-official` writes theirs).
"""

from __future__ import annotations

from dataclasses import replace

from threedrs.data.tasks import SPATIAL_INSTRUCTION, Sample

AFTER_A_SPACE = ("scan2cap", "scanqa", "sqa3d")  # tasks whose text follows "<image> " in their files
STYLES = ("threedrs", "video3dllm")


def video3dllm_prompt(sample: Sample, training: bool) -> str:
    """The text that follows the visual placeholder's newline in their model input for `sample`."""
    text = (" " if sample.task in AFTER_A_SPACE else "") + sample.prompt
    return SPATIAL_INSTRUCTION + text if training else text


def styled(samples: list[Sample], style: str, training: bool) -> list[Sample]:
    """`samples` with their prompts in `style` ("threedrs": unchanged; "video3dllm": `video3dllm_prompt`)."""
    if style not in STYLES:
        raise ValueError(f"data.prompts: expected one of {', '.join(STYLES)}, got {style!r}")
    if style == "threedrs":
        return samples
    return [replace(s, prompt=video3dllm_prompt(s, training)) for s in samples]
