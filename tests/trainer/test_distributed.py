"""Process-group set-up leaves nothing behind in /dev/shm."""

import subprocess
import sys

from tests.conftest import REPO, free_port, training_env

# One rank of a two-rank group on this machine (LOCAL_SIZE as the deepspeed launcher sets it, which
# turns DeepSpeed's shared-memory all-reduce on): sum through that shared memory after set-up, and
# report whether this rank's workspace still has a name in /dev/shm while the process is alive.
_RANK = """
import deepspeed.comm as ds_dist, torch
from trainer.distributed import init_distributed, shm_workspace_path
info = init_distributed("gloo")
t = torch.full((3,), float(info.rank + 1))
ds_dist.inference_all_reduce(t)
print("sum", t.tolist(), "left", shm_workspace_path(info.rank).exists())
"""


def test_shm_workspaces_are_unlinked_and_shared_memory_all_reduce_still_works():
    port = str(free_port())
    ranks = []
    for rank in range(2):
        env = {**training_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
        ranks.append(subprocess.Popen([sys.executable, "-c", _RANK], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    for proc in ranks:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "sum [3.0, 3.0, 3.0] left False" in out, out + err[-2000:]
