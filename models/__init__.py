"""Video-LLaMA models: config + modeling, tokenizer/processor, presets, quantized loading, adapters.

Importing this package registers `video_llama` with `AutoConfig` and `AutoModelForImageTextToText`.
"""

from .adapters import apply_adapter, trainable_parameter_count
from .configuration_video_llama import VideoLlamaConfig
from .loading import load_model
from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .presets import PRESETS, build_model, create_pretrained
from .processor import VideoLlamaProcessor
from .tokenizer import build_tokenizer

__all__ = [
    "PRESETS",
    "VideoLlamaConfig",
    "VideoLlamaForConditionalGeneration",
    "VideoLlamaProcessor",
    "apply_adapter",
    "build_model",
    "build_tokenizer",
    "create_pretrained",
    "load_model",
    "trainable_parameter_count",
]
