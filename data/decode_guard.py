"""A decode that cannot stall its worker: decoding in a child process that is killed after a time limit.

decord can hang inside FFmpeg (dmlc/decord #269 ``get_batch`` hang, #220 a deadlock with threads),
and a hung DataLoader worker stalls its rank and, at the next collective, every rank. A watchdog
thread cannot help: a Python thread cannot be killed, and a C call blocked on a native lock never
returns, so an abandoned decoder keeps its lock and the next decode in the same process can block
on it too. Only a process boundary bounds the time: `IsolatedDecoder` forks one child per worker
that serves decodes over a pipe; a decode that has not answered within the limit gets its child
killed (SIGKILL) and raises `DecodeTimeout`; the next decode forks a fresh child. A decoder that
crashes (a segfault in native code) now costs that sample (`VideoDecodeError`), not the worker.

Why ``os.fork`` and not ``multiprocessing.Process``: DataLoader workers are daemonic processes, and
multiprocessing refuses to start children from one. The fork also keeps whatever the worker's
module state is (a test's patched decoder included), and costs milliseconds, once per worker and
once per timeout. The pipe is multiprocessing's ``Pipe``; the frames come back as a numpy array.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import torch

from data.video_io import VideoDecodeError, decode_frames

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The training process's handlers (preemption) must not run in a decoder child.
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class DecodeTimeout(Exception):
    """A decode ran past the limit; its decoder process was killed."""


def _serve(conn: Connection, parent: int) -> None:
    """The child's loop: decode each request, answer ("ok", frames) or ("error"|"bug", message)."""
    if sys.platform == "linux":
        # Die with the worker, even when this process sits in a hung decode and never reads the pipe.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before prctl took effect
        return
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    torch.set_num_threads(1)  # one decoder thread per worker, as without the guard
    while True:
        try:
            args, kwargs = conn.recv()
        except (EOFError, OSError):  # the worker closed its end: it is done
            return
        try:
            reply = ("ok", decode_frames(*args, **kwargs).numpy())
        except VideoDecodeError as exc:
            reply = ("error", str(exc))
        except Exception:  # a bug (bad arguments, an unknown decoder): re-raised in the worker
            reply = ("bug", traceback.format_exc())
        conn.send(reply)


class IsolatedDecoder:
    """`data.video_io.decode_frames` run in a child process, with a per-call time limit.

    One instance per DataLoader worker (it travels inside the dataset); the child is forked on the
    first call in each process that uses the instance, so a copy inherited through a fork or a
    pickle starts its own.

    Args:
        timeout_s: seconds a decode may take, opening the video included (> 0).
    """

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"decode timeout must be > 0 seconds, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self._reset()

    def _reset(self) -> None:
        self._pid: int | None = None  # the child
        self._owner: int | None = None  # the process that forked it
        self._conn: Connection | None = None

    def __getstate__(self) -> dict:
        return {"timeout_s": self.timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.timeout_s = state["timeout_s"]
        self._reset()

    def _start(self) -> None:
        ours, theirs = Pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the worker's code
            code = 0
            try:
                ours.close()
                _serve(theirs, parent)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self._pid, self._owner, self._conn = pid, parent, ours

    def close(self) -> None:
        """Kill the child (if this process started it); the next call starts a new one."""
        if self._pid is not None and self._owner == os.getpid():
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self._pid, 0)  # reap it: no zombie per timeout
            except ChildProcessError:  # already reaped (by a SIGCHLD handler)
                pass
            self._conn.close()
        self._reset()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit modules may be gone; the child dies with us anyway
            pass

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        """``decode_frames(*args, **kwargs)`` → uint8 [N, 3, H, W], within `timeout_s`.

        Raises:
            DecodeTimeout: no answer within the limit (the child was killed).
            VideoDecodeError: the video cannot be decoded, or the decoder process died on it.
        """
        if self._owner != os.getpid():  # first call here, or a copy inherited from another process
            self._reset()
        # A child found dead (its pipe broken or closed) may have died before this request, between
        # two samples: a fresh one gets a second try. One that dies on the same sample twice is the
        # sample's doing (a decoder crash).
        for attempt in (1, 2):
            if self._pid is None:
                self._start()
            try:
                self._conn.send((args, kwargs))
                if not self._conn.poll(self.timeout_s):
                    self.close()
                    raise DecodeTimeout(f"no frames after {self.timeout_s:g} s; decoder process killed")
                status, value = self._conn.recv()
                break
            except (EOFError, OSError):
                pid = self._pid
                self.close()
                if attempt == 2:
                    raise VideoDecodeError(f"the decoder process (pid {pid}) died while decoding") from None
        if status == "ok":
            return torch.from_numpy(value)
        if status == "error":
            raise VideoDecodeError(value)
        raise RuntimeError(f"decode failed in the decoder process:\n{value}")
