import pytest
import torch
from transformers import AutoModelForCausalLM, Blip2ForConditionalGeneration

from models.assemble import assemble, main
from models.modeling_video_llama import VideoLlamaForConditionalGeneration
from models.processor import VideoLlamaProcessor


@pytest.fixture
def assembled(blip2_dir, llm_dir, tmp_path):
    return assemble(blip2_dir, llm_dir, tmp_path / "assembled", dtype=torch.float32, max_frames=8)


def test_parts_are_carried_over_exactly(assembled, blip2_dir, llm_dir):
    model = VideoLlamaForConditionalGeneration.from_pretrained(assembled)
    blip2 = Blip2ForConditionalGeneration.from_pretrained(blip2_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    for name in ("vision_model", "qformer"):
        ours, theirs = getattr(model, name).state_dict(), getattr(blip2, name).state_dict()
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), f"{name}.{key}"
    assert torch.equal(model.query_tokens, blip2.query_tokens)

    # Same computations, not only same tensors: ViT patches and LLM logits agree with the parts'.
    frames = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(
        model.vision_model(pixel_values=frames).last_hidden_state,
        blip2.vision_model(pixel_values=frames).last_hidden_state,
    )
    ids = torch.randint(5, llm.config.vocab_size, (2, 7))
    vocab = llm.config.vocab_size
    torch.testing.assert_close(
        model.language_model(input_ids=ids).logits[..., :vocab], llm(input_ids=ids).logits
    )
    assert model.config.text_config.model_type == llm.config.model_type
    if llm.config.tie_word_embeddings:
        assert (
            model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        )


def test_assembled_model_runs_with_its_processor(assembled):
    model = VideoLlamaForConditionalGeneration.from_pretrained(assembled)
    processor = VideoLlamaProcessor.from_pretrained(assembled)
    assert processor.video_token_id == model.config.video_token_index
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    tokens = processor.pad([processor.training_example("a cat plays with a red ball.")])
    out = model(pixel_values=torch.randn(1, 4, 3, 64, 64), **tokens)
    assert torch.isfinite(out.loss)
    ids = model.generate(
        torch.randn(1, 4, 3, 64, 64), **processor.generation_inputs(1), max_new_tokens=3, do_sample=False
    )
    assert ids.shape[0] == 1


def test_cli_and_mismatched_parts(blip2_dir, llm_dir, tmp_path):
    main(
        [
            "--blip2",
            str(blip2_dir),
            "--llm",
            str(llm_dir),
            "--out",
            str(tmp_path / "cli"),
            "--max-frames",
            "4",
        ]
    )
    assert VideoLlamaForConditionalGeneration.from_pretrained(tmp_path / "cli").config.max_frames == 4
    # the LLM directory in place of the BLIP-2 one is named as such
    with pytest.raises(ValueError, match="BLIP-2"):
        assemble(llm_dir, llm_dir, tmp_path / "bad")
