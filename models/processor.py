"""Text side of Video-LLaMA: the chat template, label masking, padding and caption decoding.

The video side (frames → pixel_values) belongs to `data/` (decoding + frame selector); this processor
only turns captions into token ids with Qv `<video>` placeholders where the model writes its video
tokens, in the prompt format of Video-LLaMA's conversation template.
"""

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from batch_contract import IGNORE_INDEX, right_pad

# The one chat format of the project. `{video}` expands to Qv `<video>` placeholders, `{bos}`/`{eos}`
# to the tokenizer's special tokens. Loss is taken on "{caption}{eos}" only; generation is fed the
# prompt up to and including "assistant:".
PROMPT_TEMPLATE = "{bos} user: {video} {prompt} assistant:"
ANSWER_TEMPLATE = " {caption}{eos}"
CONFIG_NAME = "video_llama_processor.json"

# The whitespace pre-tokenizer decodes "video ." ; re-attach punctuation to the word before it.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:'])")


class VideoLlamaProcessor:
    """Builds training / generation token sequences and decodes captions.

    Args:
        tokenizer: a tokenizer with bos/eos/pad tokens and the `<video>` special token
            (see `models.tokenizer.build_tokenizer`).
        num_video_tokens: Qv, the model's `num_video_query_tokens`.
        prompt: the instruction after the video tokens.
        video_token: the placeholder token string.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_video_tokens: int,
        prompt: str = "describe the video.",
        video_token: str = "<video>",
    ):
        self.tokenizer = tokenizer
        self.num_video_tokens = int(num_video_tokens)
        self.prompt = prompt
        self.video_token = video_token
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        if self.video_token_id is None or self.video_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {video_token!r} token")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"tokenizer needs {name.removesuffix('_id')} set")
        self._prompt_ids = self._encode(self.prompt_text())
        found = self._prompt_ids.count(self.video_token_id)
        if found != self.num_video_tokens:
            raise ValueError(
                f"prompt tokenises to {found} {video_token!r} tokens, expected num_video_tokens={num_video_tokens}"
            )

    # --- text ----------------------------------------------------------------------------------------
    def prompt_text(self) -> str:
        """The prompt string fed before the caption (ends with "assistant:")."""
        return PROMPT_TEMPLATE.format(
            bos=self.tokenizer.bos_token, video=self.video_token * self.num_video_tokens, prompt=self.prompt
        )

    def _encode(self, text: str) -> list[int]:
        # Specials are written into the text by the templates, so the tokenizer must add none.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- training ------------------------------------------------------------------------------------
    def training_example(
        self, caption: str, max_caption_tokens: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenise one captioned sample.

        Args:
            caption: the target text.
            max_caption_tokens: truncate the caption to this many tokens (eos always kept).
        Returns:
            {"input_ids": long [L], "labels": long [L]}: labels are -100 on the prompt and video
            placeholders, the caption ids and eos elsewhere (the model shifts them).
        """
        answer = self._encode(ANSWER_TEMPLATE.format(caption=caption.strip(), eos=""))
        if max_caption_tokens is not None:
            answer = answer[:max_caption_tokens]
        answer = answer + [self.tokenizer.eos_token_id]
        input_ids = self._prompt_ids + answer
        labels = [IGNORE_INDEX] * len(self._prompt_ids) + answer
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "labels": torch.tensor(labels)}

    def pad(self, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad `training_example` outputs into a batch.

        Returns:
            {"input_ids": [B, L], "labels": [B, L] (-100 on padding), "attention_mask": [B, L]}.
        """
        return right_pad(examples, self.tokenizer.pad_token_id)

    # --- generation ----------------------------------------------------------------------------------
    def generation_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The prompt (up to "assistant:") for `batch_size` videos.

        Returns:
            {"input_ids": long [B, Lp], "attention_mask": long [B, Lp]} (same prompt → no padding).
        """
        ids = torch.tensor(self._prompt_ids, dtype=torch.long).unsqueeze(0).repeat(batch_size, 1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, token_ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Generated ids [B, T] → captions, cut at the first eos, special tokens removed."""
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in token_ids:
            row = row.tolist() if isinstance(row, torch.Tensor) else list(row)
            if eos in row:
                row = row[: row.index(eos)]
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            texts.append(_SPACE_BEFORE_PUNCT.sub(r"\1", text).strip())
        return texts

    # --- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the tokenizer files and `video_llama_processor.json` (our settings) into the directory."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        settings = {
            "num_video_tokens": self.num_video_tokens,
            "prompt": self.prompt,
            "video_token": self.video_token,
            "prompt_template": PROMPT_TEMPLATE,
            "answer_template": ANSWER_TEMPLATE,
        }
        (save_directory / CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        return save_directory

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "VideoLlamaProcessor":
        path = Path(path)
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
        settings = json.loads(config_file.read_text())
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(
            tokenizer,
            num_video_tokens=settings["num_video_tokens"],
            prompt=settings["prompt"],
            video_token=settings.get("video_token", "<video>"),
        )
