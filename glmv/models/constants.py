"""Token strings of GLM-4.1V and where glmv's own chat template lives."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "glm4v_chat.jinja"
# glmv's template in GLM-4.6V-Flash's shape (tools, tool results, enable_thinking), for the tiny-4.6v preset.
GLM46V_CHAT_TEMPLATE_PATH = CHAT_TEMPLATE_PATH.parent / "glm46v_chat.jinja"

# Special tokens in the order of the real vocabulary (151329 .. 151344 in the released tokenizer).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
)
# Added, not special: they are part of the answer text and must survive skip_special_tokens for the splitter.
THINK_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")
# GLM-4.5/4.6's call format, added (not special) in GLM-4.6V-Flash's vocabulary: the tool parser reads them.
TOOL_TOKENS: tuple[str, ...] = ("<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
                                "</arg_value>", "<tool_response>", "</tool_response>")

# Real-checkpoint ids, for reference and for checkpoints whose config omits them.
REAL_IDS = {
    "<|endoftext|>": 151329,
    "[gMASK]": 151331,
    "<sop>": 151333,
    "<|system|>": 151335,
    "<|user|>": 151336,
    "<|assistant|>": 151337,
    "<|observation|>": 151338,
    "<|begin_of_image|>": 151339,
    "<|end_of_image|>": 151340,
    "<|begin_of_video|>": 151341,
    "<|end_of_video|>": 151342,
    "<|image|>": 151343,
    "<|video|>": 151344,
    "</answer>": 151348,
}
