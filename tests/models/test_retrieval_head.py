"""The retrieval head trains under the adapter methods and survives the adapter's save + reload."""

import pytest
import torch

from data.synthvid import caption_corpus
from models.adapters import apply_adapter, load_adapter
from models.loading import load_model
from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor
from models.retrieval_head import caption_tokens, info_nce

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return create_pretrained("tiny", tmp_path_factory.mktemp("base"), caption_corpus(), seed=0)


@pytest.fixture(scope="module")
def inputs(base):
    processor = VideoLlamaProcessor.from_pretrained(base)
    tokens = processor.pad([processor.training_example(c) for c in caption_corpus()[:3]])
    ids, mask = caption_tokens(tokens["input_ids"], tokens["labels"], processor.tokenizer.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(3, 4, 3, 64, 64, generator=gen),
        "frame_scores": torch.rand(3, 4, 3, generator=gen),
        "text_input_ids": ids,
        "text_attention_mask": mask,
        **tokens,
    }


def _model(base, method, quantization):
    torch.manual_seed(0)
    model = load_model(base, quantization=quantization, compute_dtype=torch.float32, device=CPU, retrieval_dim=16)
    return apply_adapter(model, method) if method else model


def test_caption_tokens_are_the_labelled_part(inputs):
    ids, mask = inputs["text_input_ids"], inputs["text_attention_mask"]
    for row in range(ids.shape[0]):
        labelled = inputs["input_ids"][row][inputs["labels"][row] != -100]
        assert ids[row][mask[row].bool()].tolist() == labelled.tolist()


def test_info_nce_is_low_for_matching_pairs():
    eye = torch.eye(4)
    assert info_nce(eye, eye, torch.tensor(20.0)) < 1e-3 < info_nce(eye, eye.roll(1, 0), torch.tensor(20.0))


@pytest.mark.parametrize(("method", "quantization"), [("temporal_qlora", "nf4"), ("frozen", "none")])
def test_head_trains_under_the_method(base, inputs, method, quantization):
    model = _model(base, method, quantization)
    head = {n: p for n, p in model.named_parameters() if "retrieval_head" in n and p.requires_grad}
    assert len(head) == 5  # two projections (weight, bias) and the temperature
    out = model(**inputs)
    out.contrastive_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.values())


def test_saved_adapter_reloads_with_identical_embeddings(base, inputs, tmp_path):
    model = _model(base, "temporal_qlora", "nf4")
    with torch.no_grad():  # move the trained weights away from their init, so a lost head would show
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    args = (inputs["pixel_values"], inputs["frame_scores"])
    text = (inputs["text_input_ids"], inputs["text_attention_mask"])
    with torch.no_grad():
        video, caption = model.embed_video(*args), model.embed_text(*text)
    model.save_pretrained(tmp_path)

    fresh = load_model(base, quantization="nf4", compute_dtype=torch.float32, device=CPU, retrieval_dim=16)
    reloaded = load_adapter(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded.embed_video(*args), video)
        assert torch.equal(reloaded.embed_text(*text), caption)


def test_the_head_is_part_of_the_model_config_and_saved_with_it(base, tmp_path):
    """Built from `retrieval_dim` in __init__, kept out of 4-bit, saved and loaded like any submodule."""
    from models.modeling_video_llama import VideoLlamaForConditionalGeneration

    model = load_model(base, quantization="nf4", compute_dtype=torch.float32, device=CPU, retrieval_dim=16)
    assert model.config.retrieval_dim == 16 and type(model.retrieval_head.video_proj) is torch.nn.Linear
    plain = load_model(base, quantization="nf4", compute_dtype=torch.float32, device=CPU)
    assert plain.retrieval_head is None and plain.config.retrieval_dim is None
    full = VideoLlamaForConditionalGeneration.from_pretrained(base, retrieval_dim=16)
    with torch.no_grad():
        full.retrieval_head.logit_scale.fill_(1.5)
    full.save_pretrained(tmp_path)
    again = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path)
    assert again.config.retrieval_dim == 16
    for name, value in full.retrieval_head.state_dict().items():
        assert torch.equal(again.retrieval_head.state_dict()[name], value), name
