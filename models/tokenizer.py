"""An offline tokenizer for the random-init models: a small BPE trained on the caption corpus.

No pretrained tokenizer can be downloaded here, so the `tokenizers` library trains one in well under
a second; it is wrapped as a `PreTrainedTokenizerFast`, which saves and reloads through
`save_pretrained` / `AutoTokenizer.from_pretrained` exactly like a hub tokenizer. The same corpus
gives the same ids in every process (`_canonical_ids`), so a base model built twice is the same file.
"""

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
VIDEO_TOKEN = "<video>"
# Order fixes the ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then the extras (<video>=4).
BASE_SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer(
    corpus: Iterable[str],
    extra_special_tokens: Sequence[str] = (VIDEO_TOKEN,),
    vocab_size: int = 1000,
    min_frequency: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a lowercase, whitespace-split BPE tokenizer on `corpus`.

    Args:
        corpus: texts (captions, prompts). The chat-template words ("user", "assistant", the
            prompt) should be part of it so they are not split into characters.
        extra_special_tokens: never-split tokens added after `<pad> <s> </s> <unk>` (`<video>` by default).
        vocab_size: upper bound; a small corpus gives a smaller vocabulary.
        min_frequency: BPE merges need at least this many occurrences.
    Returns:
        `PreTrainedTokenizerFast` with pad/bos/eos/unk set; `len(tok)` is the vocabulary size the
        model's embedding needs. It adds no bos/eos by itself: the processor's template places them.
    """
    specials = list(BASE_SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in BASE_SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace splits punctuation off words too ("video." → "video", "."), which keeps a tiny
    # vocabulary useful; the Metaspace-free decoder below then re-joins pieces with spaces.
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    _canonical_ids(tok, len(specials))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=[t for t in specials if t not in BASE_SPECIAL_TOKENS],
    )
    return fast


def _canonical_ids(tok: Tokenizer, num_specials: int) -> None:
    """Renumber a trained BPE vocabulary in an order that depends on the corpus alone.

    The trainer's merges are the same in every process, but it numbers the initial alphabet (the
    single characters, and the "x</w>" end-of-word ones) in hash-map order, which changes from process
    to process: the same corpus gave other ids each run, hence another embedding row per token and
    another model. Kept: the special tokens' ids and the merges; new order: specials, the alphabet
    sorted, then each merge's product in merge order (GPT-2's vocabulary order).
    """
    vocab = tok.get_vocab()
    merges = [tuple(pair) for pair in json.loads(tok.to_str())["model"]["merges"]]
    specials = sorted((i, t) for t, i in vocab.items() if i < num_specials)
    products = ["".join(pair) for pair in merges]
    alphabet = sorted(set(vocab) - {t for _, t in specials} - set(products))
    order = [t for _, t in specials] + alphabet + products
    assert len(order) == len(vocab), "every token is a special, a letter or one merge's product"
    tok.model = models.BPE(
        vocab={t: i for i, t in enumerate(order)}, merges=merges, unk_token=UNK, end_of_word_suffix="</w>"
    )
