"""Captioning scores the way the field computes them: pycocoevalcap over the whole evaluated set.

CIDEr weighs n-grams by their document frequency in the *whole* reference set, so scores are
computed once over all clips, never averaged over batches.

Empty generations (the model emitted eos at once, or only punctuation, which the PTB tokenizer
drops) are legitimate predictions: pycocoevalcap 1.2 scores an empty hypothesis 0 in every metric
(checked in tests), so they are passed through as they are, never dropped (dropping would raise
the score).
"""

from __future__ import annotations

import contextlib
import io
import shutil

JAVA_HELP = (
    "pycocoevalcap needs Java for the PTB tokenizer and METEOR, and no `java` is on PATH. "
    "Install a JRE (Debian/Ubuntu: `apt-get install -y default-jre-headless`) or set eval.num_samples=0."
)


def score_captions(
    predictions: dict[str, str], references: dict[str, list[str]], meteor: bool = True
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``predictions`` against ``references``.

    Args:
        predictions: clip id → generated caption.
        references: clip id → one or more reference captions (MSR-VTT has 20 per clip).
        meteor: False leaves METEOR out (its Java scorer loads for seconds on every call: a sweep of
            many small runs pays that each time).
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
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
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
