"""Captioning scores the way the field computes them: pycocoevalcap over the whole evaluated set.

CIDEr weighs n-grams by their document frequency in the *whole* reference set, so scores are
computed once over all clips, never averaged over batches.

Empty generations (the model emitted eos at once, or only punctuation, which the PTB tokenizer
drops) are legitimate predictions: pycocoevalcap 1.2 scores an empty hypothesis 0 in every metric
(checked in tests), so they are passed through as they are, never dropped (dropping would raise
the score).

Languages written without spaces between words (Chinese) are scored on characters: pycocoevalcap's
PTB tokenizer splits at whitespace and English punctuation, so an unsegmented Chinese sentence
would be one token and every n-gram metric would only say whether the whole sentence matched.
For those languages references and candidates are tokenized instead by the `tokenizers` library's
BERT normalizer and pre-tokenizer (every CJK ideograph a token of its own, Latin words and digits
kept whole, lowercased), and punctuation tokens are dropped as the PTB tokenizer drops them.
Character-level scores are the segmenter-free convention for Chinese captioning; they are not
comparable with word-level scores (segmented by e.g. jieba) of other papers.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import unicodedata

from tokenizers import normalizers, pre_tokenizers

JAVA_HELP = (
    "pycocoevalcap needs Java for the PTB tokenizer and METEOR, and no `java` is on PATH. "
    "Install a JRE (Debian/Ubuntu: `apt-get install -y default-jre-headless`) or set eval.num_samples=0."
)

# ISO 639-1 codes of languages scored on characters (see the module docstring).
CHARACTER_LEVEL = ("zh",)


def character_tokens(text: str) -> str:
    """'一个男人，骑着 BMX。' → '一 个 男 人 骑 着 bmx': CJK ideographs split, punctuation dropped."""
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    pieces = pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normalizer.normalize_str(text))
    words = [w for w, _ in pieces if not all(unicodedata.category(ch).startswith("P") for ch in w)]
    return " ".join(words)


def _tokenize(captions: dict[str, list[str]], language: str | None) -> dict[str, list[str]]:
    """clip id → its captions as space-separated tokens, the form pycocoevalcap's scorers read."""
    if language in CHARACTER_LEVEL:
        return {k: [character_tokens(c) for c in caps] for k, caps in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions.items()})


def score_captions(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    meteor: bool = True,
    language: str | None = None,
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``predictions`` against ``references``.

    Args:
        predictions: clip id → generated caption.
        references: clip id → one or more reference captions (MSR-VTT has 20 per clip).
        meteor: False leaves METEOR out (its Java scorer loads for seconds on every call: a sweep of
            many small runs pays that each time).
        language: ISO 639-1 code of the captions; those of `CHARACTER_LEVEL` are tokenized into
            characters, every other (and None, the default references) by the PTB tokenizer.
    Returns:
        ``{"bleu1": …, "bleu4": …, "meteor": …, "rouge_l": …, "cider": …}`` (fractions, CIDEr ×1).
    """
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing or extra:
        raise ValueError(
            f"predictions and references disagree: missing predictions for {missing[:10]}"
            f"{' …' if len(missing) > 10 else ''}, predictions without references {extra[:10]}"
        )
    if not references:
        raise ValueError("no captions to score")
    unreferenced = sorted(k for k, refs in references.items() if not any(r.strip() for r in refs))
    if unreferenced:
        raise ValueError(f"clips without any non-empty reference caption: {unreferenced[:10]}")
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_HELP)

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    gts = _tokenize(references, language)
    res = _tokenize({k: [predictions[k]] for k in references}, language)
    scores: dict[str, float] = {}
    # Bleu prints its internals to stdout; keep the user's console readable.
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
    if meteor:
        scores["meteor"] = float(Meteor().compute_score(gts, res)[0])
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return scores
