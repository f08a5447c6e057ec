"""Checks of ``data.caption_language`` before a run trains: what per-sample skips cannot say.

With a language the shards do not hold, every sample would be skipped (``missing_language``) and
the run would train on nothing; with a tokenizer that cannot write the language, every caption
would become ``<unk>`` tokens and the run would train on noise. Both are whole-run mistakes, so
they stop the run at its start with the key, the shard and what was found instead.

The random-init presets' tokenizer (`models.tokenizer`) is a BPE trained on the SynthVid captions
(English): it has no Chinese characters and maps them to ``<unk>``. A Chinese run therefore needs a
base model whose tokenizer covers Chinese (a pretrained one, or a base written by
`models.presets.create_pretrained` with Chinese captions in its corpus).
"""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

from data.languages import CAPTIONS_BY_LANGUAGE, check_language_code, peek_references
from data.pipeline import expand_shards
from trainer.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

# Samples read from the first shard of a split; a few suffice, the point is the whole-run mistake.
PEEK_SAMPLES = 32
# More unknown tokens than this share of a language's caption tokens: the tokenizer cannot write it.
MAX_UNKNOWN_SHARE = 0.1


def check_language_key(cfg: RunConfig) -> None:
    """``data.caption_language`` is null or has the form of an ISO 639-1 code (before anything loads)."""
    if cfg.data.caption_language is not None:
        try:
            check_language_code(cfg.data.caption_language, "data.caption_language")
        except ValueError as err:
            raise ConfigError(str(err)) from None


def check_caption_language(
    cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, splits: tuple[str, ...] = ("train", "eval")
) -> None:
    """With ``data.caption_language`` set: the first samples of each split's shards
    (``data.<split>_shards``; eval only when ``eval.num_samples`` > 0) have references in it, and
    ``tokenizer`` writes those of the first split with few ``<unk>`` tokens. Remote shards (URLs,
    ``pipe:``) are not read here: their samples are still skipped one by one.

    Raises:
        ConfigError: no sample read holds the language, or the tokenizer cannot write it.
    """
    language = cfg.data.caption_language
    if language is None:
        return
    tokenizer_checked = False
    for split in splits:
        shards = getattr(cfg.data, f"{split}_shards")
        if shards is None or (split == "eval" and cfg.eval.num_samples <= 0):
            continue
        url = expand_shards(shards)[0]
        if "://" in url or url.startswith("pipe:"):
            continue
        read, languages, refs = peek_references(url, language, PEEK_SAMPLES)
        if not refs:
            found = dict(sorted(languages.items())) or "nothing (shards made without it, or by another tool)"
            raise ConfigError(
                f"data.caption_language={language!r}: none of the first {read} samples of {url} "
                f"(data.{split}_shards) has {language!r} references; their json's {CAPTIONS_BY_LANGUAGE} "
                f"holds {found}. Pick one of those languages, or null for the default references."
            )
        if not tokenizer_checked:
            _check_tokenizer(tokenizer, language, refs, cfg.model.name_or_path)
            tokenizer_checked = True


def unknown_share(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> float:
    """The share of ``<unk>`` among the tokens of ``texts`` (0 for a tokenizer without one)."""
    if tokenizer.unk_token_id is None:
        return 0.0
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return sum(i == tokenizer.unk_token_id for i in ids) / max(len(ids), 1)


def _check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, language: str, refs: list[str], model: str | None
) -> None:
    share = unknown_share(tokenizer, refs)
    if share > MAX_UNKNOWN_SHARE:
        unknown = sorted({ch for ref in refs[:8] for ch in ref if unknown_share(tokenizer, [ch]) == 1.0})
        raise ConfigError(
            f"data.caption_language={language!r}: the tokenizer of {model} writes {share:.0%} of the "
            f"{language!r} references' tokens as {tokenizer.unk_token} (e.g. {''.join(unknown[:10])!r}); "
            "it cannot train on them. Use a base model whose tokenizer covers the language (the "
            "random-init presets' tokenizer knows only the SynthVid captions' characters)."
        )
    if share > 0:
        log.warning(
            "data.caption_language=%r: %.1f%% of the first references' tokens are %s",
            language,
            100 * share,
            tokenizer.unk_token,
        )
