"""Video-text data: sources → shards, the streaming pipeline, decoding, frame scores and selection,
and SynthVid, the synthetic benchmark with ground truth. Imports neither `models` nor `trainer`;
what a batch looks like to the model is `batch_contract`."""
