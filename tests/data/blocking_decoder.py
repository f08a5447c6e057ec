"""A decoder that blocks for an hour on one chosen video and decodes every other one (decord).

``blocking(mp4_sha1)`` is that decoder; set as `data.decoders.decord_backend.decode_frames` it is
used in this process and the processes forked from it (DataLoader workers, decoder children). ``python -m tests.data.blocking_decoder
SHA1 train.py-args...`` runs training with it installed, as ``python train.py`` would.
"""

from __future__ import annotations

import hashlib
import sys
import threading

import data.decoders.decord_backend as backend


def blocking(mp4_sha1: str):
    """decord's ``decode_frames``, except that the video with this sha1 blocks for an hour."""
    decode = backend.decode_frames

    def decode_or_block(mp4: bytes, *args, **kwargs):
        if hashlib.sha1(mp4).hexdigest() == mp4_sha1:
            threading.Event().wait(3600)  # a real block: nothing sets the event
        return decode(mp4, *args, **kwargs)

    return decode_or_block


if __name__ == "__main__":
    backend.decode_frames = blocking(sys.argv[1])
    import train

    train.main(sys.argv[2:])
