"""The prepared GPU check: its CPU rehearsal end to end, its guards, and the wheel sets' size check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check, gpu_wheels
from trainer.distributed import PROCESS_GROUP_ENV

REPO = Path(__file__).resolve().parents[2]


def test_cpu_rehearsal_runs_every_part(tmp_path: Path) -> None:
    """`make gpu-check DEVICE=cpu`: the script the GPU machine runs, every part, at its smallest sizes."""
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_ENV}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        ["make", "-s", "gpu-check", "DEVICE=cpu", f"PY={sys.executable}", f"OUT_DIR={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check-cpu.json").read_text())
    parts = result["figures"]
    assert list(parts) == list(gpu_check.PARTS)
    for name, part in parts.items():
        assert part["ok"], (name, part)
        assert part["checks"] and all(part["checks"].values())
    assert not (tmp_path / gpu_check.PARTIAL_FILE).exists()
    # fp32 on CPU: both NF4 paths dequantize then matmul, so layer and reference agree closely
    assert parts["nf4"]["figures"]["forward_rel_error"] < 1e-4
    train = parts["train"]["figures"]
    assert train["zero2"]["zero_stage"] == 2 and train["zero3"]["zero_stage"] == 3
    assert train["zero3"]["four_bit_weights_partitioned"] == train["zero3"]["four_bit_weights"] > 0
    large = parts["memory_7b"]["figures"]
    assert large["qlora_tflop_per_step"] > 0 and large["qlora_tokens_per_s"] > 0
    assert large["qlora_mfu_measured_peak"] is None  # no peak known for a CPU
    assert parts["decode"]["figures"]["frames"] == parts["decode"]["figures"]["clips"] * 16
    for key in ("selector_frames_per_s", "mid_qlora_over_lora_step_peak", "large_qlora_step_time_s"):
        assert result["ratios"][key] > 0


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(*args):
        raise RuntimeError("CUDA error: no kernel image")

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "nf4", broken)
    code = gpu_check.main(["--device", "cpu", "--small", "--out", str(tmp_path), "--parts", "nf4,selector"])

    assert code == 1
    parts = json.loads((tmp_path / "gpu_check-cpu.json").read_text())["figures"]
    assert parts["nf4"] == {"ok": False, "error": "RuntimeError: CUDA error: no kernel image",
                            "traceback": parts["nf4"]["traceback"], "seconds": parts["nf4"]["seconds"]}  # fmt: skip
    assert parts["selector"]["ok"] and parts["selector"]["figures"]["indices_equal_fraction"] == 1.0
    assert "FAILED nf4: RuntimeError: CUDA error: no kernel image" in capsys.readouterr().err


def test_a_failed_check_fails_its_part(monkeypatch) -> None:
    monkeypatch.setitem(
        gpu_check.PART_FUNCTIONS, "nf4", lambda *a: ({"x": 1}, {"fine": True, "matches": False})
    )
    part = gpu_check.run_part("nf4", None, None, None, None)
    assert not part["ok"] and part["failed_checks"] == ["matches"] and part["figures"] == {"x": 1}


def test_unknown_part_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--parts", "nf4,warp_drive"])
    assert "unknown warp_drive" in capsys.readouterr().err


def _fake_set(folder: Path, sizes: list[int]) -> None:
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (folder / f"pkg{i}-1.0-py3-none-any.whl").write_bytes(b"\0" * size)


def test_wheel_sets_under_the_limit_pass(tmp_path: Path) -> None:
    sets = {"a": ("x==1", "y==1"), "b": ("z==1",)}
    _fake_set(tmp_path / "a", [3000, 1000])
    _fake_set(tmp_path / "b", [500])
    sizes = gpu_wheels.set_sizes(tmp_path, tree=2000, sets=sets)
    assert [(s.name, s.files_bytes) for s in sizes] == [("a", 4000), ("b", 500)]
    gpu_wheels.check_sizes(sizes, sets, limit=4000 + 2000 + gpu_wheels.TREE_MARGIN_BYTES)


def test_wheel_set_over_the_limit_is_named_with_its_sizes(tmp_path: Path) -> None:
    sets = {"a": ("x==1",), "b": ("z==1",)}
    _fake_set(tmp_path / "a", [10 * 2**20])
    _fake_set(tmp_path / "b", [61 * 2**20])
    sizes = gpu_wheels.set_sizes(tmp_path, tree=3 * 2**20, sets=sets)
    with pytest.raises(
        ValueError, match=r"set 'b': 61\.0 MiB of packages \+ 3\.0 MiB of working tree"
    ) as err:
        gpu_wheels.check_sizes(sizes, sets)
    assert "set 'a'" not in str(err.value)


def test_incomplete_wheel_set_is_an_error(tmp_path: Path) -> None:
    sets = {"a": ("x==1", "y==1")}
    _fake_set(tmp_path / "a", [100])
    with pytest.raises(ValueError, match="set 'a': 1 files for 2 requirements"):
        gpu_wheels.check_sizes(gpu_wheels.set_sizes(tmp_path, tree=0, sets=sets), sets)


def test_deepspeed_is_fetched_as_its_sdist_and_the_rest_as_py312_wheels(tmp_path: Path) -> None:
    sdist = gpu_wheels.download_command("deepspeed==0.19.8", tmp_path)
    assert "--no-binary" in sdist and "--platform" not in sdist
    wheel = gpu_wheels.download_command("bitsandbytes==0.50.2", tmp_path)
    assert wheel[wheel.index("--python-version") + 1] == "3.12" and "--only-binary" in wheel
    assert gpu_wheels.device_command(gpu_wheels.DEFAULT_OUT, "check") == (
        "make gpu-check WHEELS=.gpu-wheels/check OUT_DIR=$OUT"
    )


def test_the_tree_size_counts_what_git_would_send() -> None:
    assert 100_000 < gpu_wheels.tree_bytes() < gpu_wheels.CALL_LIMIT_BYTES


# The decode part runs in a call of its own, where only the decode wheel set was installed.
_WITHOUT_TRAINING_LIBRARIES = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"deepspeed", "bitsandbytes", "transformers", "peft", "mlflow"}:
            raise ModuleNotFoundError(f"No module named {name!r} (not carried)")
sys.meta_path.insert(0, Absent())
from benchmarks import gpu_check
sys.exit(gpu_check.main(sys.argv[1:]))
"""


def test_decode_part_needs_none_of_the_training_libraries(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINING_LIBRARIES, "--device", "cpu", "--small", "--out", str(tmp_path),
         "--parts", "decode"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check_decode-cpu.json").read_text())
    assert result["figures"]["decode"]["ok"] and result["ratios"]["decode_frames_per_s"] > 0


def test_make_gpu_check_on_the_gpu_machine_installs_then_runs_under_a_time_limit(tmp_path: Path) -> None:
    proc = subprocess.run(
        # --no-print-directory: under `make test` this make is nested and would print
        # "Entering directory" lines around the recipe.
        ["make", "-n", "--no-print-directory", "gpu-check", "WHEELS=.gpu-wheels/check", f"OUT_DIR={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    joined = proc.stdout.replace("\\\n", " ")  # the recipe's continuation lines
    install, run = [" ".join(line.split()) for line in joined.splitlines() if line.strip()]
    assert install == "scripts/gpu-check-install .gpu-wheels/check /tmp/gpu-check-site python3"
    assert run.startswith(
        "PYTHONPATH=/tmp/gpu-check-site PYTHONUNBUFFERED=1 timeout 560 python3 -m benchmarks.gpu_check"
    )
    assert f"--device cuda --out {tmp_path}" in run


def test_install_script_refuses_an_empty_wheel_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(REPO / "scripts/gpu-check-install"), str(tmp_path), str(tmp_path / "site")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"no wheels or sdists in {tmp_path} (run make gpu-wheels" in proc.stderr


def _fake_bitsandbytes_wheel(folder: Path) -> Path:
    """A minimal installable wheel laid out as bitsandbytes' is: one native library per accelerator."""
    import base64
    import hashlib
    import zipfile

    info = "bitsandbytes-0.50.2.dist-info"
    files = {
        "bitsandbytes/__init__.py": b"",
        **{f"bitsandbytes/libbitsandbytes_{lib}.so": lib.encode() * 1000 for lib in LIBRARIES},
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    wheel = folder / "bitsandbytes-0.50.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return wheel


LIBRARIES = ("cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2025")


def test_bitsandbytes_is_pruned_to_the_cuda13_libraries_and_still_installs(tmp_path: Path) -> None:
    import zipfile

    wheel = _fake_bitsandbytes_wheel(tmp_path)
    assert gpu_wheels.prune_wheel(wheel, gpu_wheels.PRUNED["bitsandbytes"]) > 0
    with zipfile.ZipFile(wheel) as archive:
        libraries = sorted(n for n in archive.namelist() if n.endswith(".so"))
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    kept = ["cpu", "cuda130", "cuda132"]
    assert libraries == [f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in kept]
    assert "cuda118" not in record and "rocm64" not in record and "cuda130" in record
    assert gpu_wheels.prune_wheel(wheel, gpu_wheels.PRUNED["bitsandbytes"]) == 0  # already pruned
    # pip verifies the files against RECORD: the repacked wheel installs
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    assert sorted(p.name for p in (target / "bitsandbytes").glob("*.so")) == [
        f"libbitsandbytes_{lib}.so" for lib in kept
    ]
