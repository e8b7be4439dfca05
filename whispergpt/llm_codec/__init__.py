"""UniAudio 1.5's LLM-Codec: audio as a frozen LLM's words and tokens (docs/UNIAUDIO.md).

``LLMCodec.from_pretrained(DIR)`` opens a codec trained by ``whispergpt llm-codec train``.
"""

from whispergpt.llm_codec.model import LLMCodec, LLMCodecConfig

__all__ = ["LLMCodec", "LLMCodecConfig"]
