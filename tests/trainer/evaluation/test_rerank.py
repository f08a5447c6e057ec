import numpy as np
import pytest
import torch

from models.adapters import apply_adapter
from models.presets import build_model
from models.processor import VideoLlamaProcessor
from models.tokenizer import build_tokenizer
from trainer.evaluation.batch_outputs import base_model
from trainer.evaluation.rerank import caption_log_likelihood, rerank_top_k
from trainer.evaluation.retrieval_metrics import retrieval_metrics


def test_top_k_are_reordered_by_likelihood_and_stay_on_top():
    similarity = np.array(
        [
            [0.5, 0.9, 0.8],  # caption 0 of video 0: the head ranks it third
            [0.1, 0.7, 0.6],  # caption 1 of video 1: first
            [0.3, 0.2, 0.9],  # caption 2 of video 2: first
        ]
    )
    # log p(caption | video): video 0 is the likeliest for caption 0, but outside its top 2.
    table = np.array([[0.0, -5.0, -1.0], [-9.0, -3.0, -1.0], [-2.0, -9.0, -1.0]])
    asked = []

    def log_likelihood(pairs):
        asked.extend(pairs)
        return np.array([table[c, v] for c, v in pairs])

    reranked = rerank_top_k(similarity, 2, log_likelihood)
    assert sorted(asked) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 0), (2, 2)]  # C x k pairs only
    assert [np.argsort(-row).tolist() for row in reranked] == [[2, 1, 0], [2, 1, 0], [2, 0, 1]]
    before, after = retrieval_metrics(similarity, [0, 1, 2]), retrieval_metrics(reranked, [0, 1, 2])
    assert before["t2v_r1_pct"] == pytest.approx(200 / 3) and after["t2v_r1_pct"] == pytest.approx(100 / 3)
    assert before["t2v_mnr"] == pytest.approx(5 / 3) and after["t2v_mnr"] == pytest.approx(2.0)


def test_k_larger_than_the_set_reorders_everything():
    similarity = np.array([[0.3, 0.2, 0.1]])
    reranked = rerank_top_k(similarity, 10, lambda pairs: np.array([float(v) for _, v in pairs]))
    assert np.argsort(-reranked[0]).tolist() == [2, 1, 0]


@pytest.mark.parametrize("method", ["frozen", "lora", "temporal_lora", "prefix", "adapter"])
def test_encoded_videos_score_as_the_pixels_do(method):
    """Forced choice encodes each clip once and scores its candidates on the video tokens: the same
    log-likelihoods as scoring from pixels, for every family of adapter (gates read the scores)."""
    torch.manual_seed(0)
    captions = ["a red circle moves up", "two blue squares move down", "a red circle moves down"]
    tokenizer = build_tokenizer(captions)
    base = build_model("tiny", tokenizer)
    processor = VideoLlamaProcessor(
        tokenizer, num_video_tokens=base.config.num_video_query_tokens, video_token=base.config.video_token
    )
    model = apply_adapter(base, method, **({"r": 4} if "lora" in method else {}))
    model.eval()
    pixels = torch.randn(3, 4, 3, 64, 64)
    scores = torch.rand(3, 4, 3)
    with torch.no_grad():
        direct = caption_log_likelihood(model, processor, captions, pixels, scores)
        features = base_model(model).encode_video(pixels, scores)
        encoded = caption_log_likelihood(model, processor, captions, None, None, video_features=features)
        other = caption_log_likelihood(model, processor, captions, pixels.flip(0), scores.flip(0))
    np.testing.assert_allclose(encoded, direct, rtol=1e-5, atol=1e-4)
    assert not np.allclose(other, direct, atol=1e-4)  # the video matters, so the check can fail
