"""Evaluation of a trained adapter: the sharded evaluation pass, its metrics and its report.

- ``eval_pass``: every rank runs its share of the eval shards through the model (captions,
  retrieval embeddings, kept frames, gates); rank 0 gathers the clips and scores the whole set.
- ``batch_outputs``: what one batch gives (generation, embeddings and choice likelihoods per frame
  view, gates); ``clip_results``: what is kept per clip and returned for the set; ``set_scores``:
  the set's figures with their chance levels and per-clip outcomes.
- ``frame_views``: the temporal controls, the kept frames shuffled in time or one frame repeated.
- ``structured_metrics``: SynthVid generations parsed into count, colour, shape and directions and
  scored fact by fact against the ground truth.
- ``caption_metrics``: BLEU / METEOR / ROUGE-L / CIDEr with pycocoevalcap.
- ``retrieval_metrics``: text→video and video→text R@K, MdR, MnR, mAP and their chance levels;
  group accuracy against SynthVid's hard negatives (order, direction).
- ``rerank``: re-ordering a caption's top-k videos by log p(caption | video).
- ``forced_choice``: per clip, the likeliest of M candidate captions (the true one and its
  hard negatives) under log p(caption | video), against chance 1 / M.
- ``html_report``: the qualitative HTML page of an evaluation.
- ``cli``: ``python -m trainer.evaluation`` (this package's ``__main__``), evaluating an adapter folder.
"""
