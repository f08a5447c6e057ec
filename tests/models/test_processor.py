import torch
from transformers import AutoTokenizer

from batch_contract import IGNORE_INDEX
from models.processor import VideoLlamaProcessor
from models.tokenizer import build_tokenizer


def test_tokenizer_specials_and_round_trip(tmp_path):
    tok = build_tokenizer(["A Man rides a bike.", "user: describe the video. assistant:"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>", "<video>")}
    assert ids == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<video>": 4}
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    # lowercase normalizer; <video> never split, even glued to neighbours
    assert tok("A MAN")["input_ids"] == tok("a man")["input_ids"]
    assert tok("x<video><video>y", add_special_tokens=False)["input_ids"].count(4) == 2
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a man rides <video>")["input_ids"] == tok("a man rides <video>")["input_ids"]
    assert again.eos_token_id == tok.eos_token_id and len(again) == len(tok)


def test_labels_mask_prompt_and_video(processor):
    qv = processor.num_video_tokens
    ex = processor.training_example("a cat plays with a red ball.")
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    prompt_len = processor.generation_inputs(1)["input_ids"].shape[1]
    assert ids[0] == processor.tokenizer.bos_token_id
    assert (ids[:prompt_len] == processor.video_token_id).sum() == qv
    assert (labels[:prompt_len] == IGNORE_INDEX).all()  # bos, "user:", video slots, prompt, "assistant:"
    assert (labels[prompt_len:] != IGNORE_INDEX).all()  # caption + eos carry loss
    assert torch.equal(labels[prompt_len:], ids[prompt_len:])
    assert labels[-1] == processor.tokenizer.eos_token_id
    assert processor.decode(ids[prompt_len:].unsqueeze(0)) == ["a cat plays with a red ball."]


def test_generation_prompt_is_training_prefix(processor):
    gen = processor.generation_inputs(3)
    ex = processor.training_example("a man is riding a bike.")
    assert gen["input_ids"].shape == gen["attention_mask"].shape == (3, gen["input_ids"].shape[1])
    assert torch.equal(gen["input_ids"][1], ex["input_ids"][: gen["input_ids"].shape[1]])
    tokens = processor.tokenizer.convert_ids_to_tokens(gen["input_ids"][0, -2:].tolist())
    assert "".join(tokens).replace("</w>", "") == "assistant:"


def test_pad_and_truncate(processor):
    short = processor.training_example("a cat")
    long = processor.training_example("a man is riding a bike down the street.", max_caption_tokens=3)
    assert long["labels"][-1] == processor.tokenizer.eos_token_id
    assert (long["labels"] != IGNORE_INDEX).sum() == 4  # 3 caption tokens + eos
    batch = processor.pad([short, long])
    n = short["input_ids"].numel()
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][0, n:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all() and batch["attention_mask"][0, n:].sum() == 0


def test_decode_cuts_at_eos(processor):
    tok = processor.tokenizer
    caption = tok("a man dances.", add_special_tokens=False)["input_ids"]
    rows = torch.tensor(
        [caption + [tok.eos_token_id, caption[0]], [tok.eos_token_id] + caption + [tok.pad_token_id]]
    )
    assert processor.decode(rows) == ["a man dances.", ""]


def test_save_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    again = VideoLlamaProcessor.from_pretrained(tmp_path)
    assert again.num_video_tokens == processor.num_video_tokens and again.prompt == processor.prompt
    ex, ex2 = processor.training_example("a cat"), again.training_example("a cat")
    assert torch.equal(ex["input_ids"], ex2["input_ids"]) and torch.equal(ex["labels"], ex2["labels"])
