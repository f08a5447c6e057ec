"""Download the packages the GPU check (`benchmarks.gpu_check`) needs on a GPU machine without network.

    python -m benchmarks.gpu_wheels [--out .gpu-wheels] [--check-only]      (make gpu-wheels)

The borrowed GPU machine (shared/KINDS.md: Python 3.12, torch 2.11 CUDA 13, transformers 5.17,
peft, accelerate, numpy, nvcc) has no registry and no deepspeed, bitsandbytes, webdataset or decord.
What it lacks travels with the working tree, at most 64 MiB per call *including the tree itself*,
so the packages are split into sets, one set per call:

- ``check``: what every part of the check but the decode one needs: bitsandbytes (its CUDA
  kernels), deepspeed (an sdist only: the registry has no deepspeed wheel; it installs there with
  ``DS_BUILD_OPS=0 pip install --no-build-isolation``, pure Python, and the check trains with
  DeepSpeed's ``torch_adam`` so that no op is JIT-built), deepspeed's dependencies that the machine
  lacks (hjson, pydantic and its own), peft at our pin (the machine's version is not recorded)
  and transformers 5.23: `models.configuration_video_llama` declares its sub-configs with
  ``SubConfigSpec``, which the machine's 5.17 lacks (the CPU rehearsal against 5.17 fails at that
  import; against 5.23 with the machine's huggingface_hub 1.33 it passes). 13 MB of the 64 MiB.
  The bitsandbytes wheel holds a native library for every CUDA, ROCm and XPU release it supports
  (43 MB); the machine's torch is a CUDA 13 build, so the wheel is repacked with the CUDA 13
  libraries and the CPU one only (`prune_wheel`, 9 MB): with the whole wheel the set and the
  tree had reached the 64 MiB exactly;
- ``decode``: decord, webdataset (with braceexpand) and PyAV (SynthVid's encoder, to write the
  shards there), for the pipeline's decode rate; a second call.

Each set is downloaded into ``<out>/<set>/`` for CPython 3.12 on manylinux x86-64 with ``--no-deps``
(each dependency is named, so nothing the machine has is carried twice). Then every set plus the
working tree (tracked and untracked-not-ignored files, what the device tool sends) must stay under
the limit, or the command fails naming the set; and the device command of each set is printed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".gpu-wheels"
CALL_LIMIT_BYTES = 64 * 2**20
# What the tree may grow by between this check and the call (a results JSON, a README edit).
TREE_MARGIN_BYTES = 2**20

# Set name → pinned requirements. Pins agree with pyproject.toml where it pins the package.
SETS: dict[str, tuple[str, ...]] = {
    "check": (
        "bitsandbytes==0.50.2",
        "deepspeed==0.19.8",
        "hjson==3.1.0",
        "pydantic==2.14.4",
        "pydantic-core==2.50.5",
        "annotated-types==0.8.0",
        "typing-inspection==0.4.5",
        "typing-extensions==4.16.0",
        "peft==0.21.2",
        "transformers==5.23.0",
    ),
    "decode": ("decord==0.6.0", "webdataset==1.0.2", "braceexpand==0.1.7", "av==18.1.0"),
}
# Files a downloaded wheel of the package does not need on the GPU machine (a regex, full match on
# the archive name): bitsandbytes' native libraries for other accelerators than the machine's
# CUDA 13 (torch 2.11 cu13 loads libbitsandbytes_cuda130; cuda132 and the CPU library are kept).
PRUNED: dict[str, str] = {
    "bitsandbytes": r"bitsandbytes/libbitsandbytes_(cuda(?!13)\d+|rocm\d+|xpu\d+)\.so",
}
# Published as a source distribution only: downloaded as such, built on the GPU machine.
SDIST_ONLY = frozenset({"deepspeed"})
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)


@dataclass(frozen=True)
class SetSize:
    name: str
    files: tuple[Path, ...]
    files_bytes: int
    tree_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.files_bytes + self.tree_bytes + TREE_MARGIN_BYTES


def download_command(requirement: str, dest: Path) -> list[str]:
    """The pip command that fetches `requirement` for the GPU machine into `dest`."""
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    if requirement.split("==")[0] in SDIST_ONLY:
        return [*pip, "--no-binary", ":all:", requirement]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    return [
        *pip, "--only-binary", ":all:", "--python-version", "3.12", "--implementation", "cp",
        *platforms, requirement,
    ]  # fmt: skip


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what the device tool sends: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    paths = {root / name for name in listed.split("\0") if name}
    return sum(path.stat().st_size for path in paths if path.is_file())


def prune_wheel(wheel: Path, pattern: str) -> int:
    """Rewrite `wheel` without its members whose names fully match `pattern`, and without their
    RECORD lines (pip checks the hash of every file RECORD lists); returns the bytes removed (0 when
    nothing matches, e.g. a wheel pruned before). Written to a temporary file, then renamed."""
    rule = re.compile(pattern)
    with zipfile.ZipFile(wheel) as source:
        members = source.infolist()
        dropped = {m.filename for m in members if rule.fullmatch(m.filename)}
        if not dropped:
            return 0
        before = wheel.stat().st_size
        partial = wheel.with_name(wheel.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
            for member in members:
                if member.filename in dropped:
                    continue
                data = source.read(member)
                if member.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
                target.writestr(member, data)
    partial.replace(wheel)
    return before - wheel.stat().st_size


def set_sizes(out: Path, tree: int, sets: dict[str, tuple[str, ...]] = SETS) -> list[SetSize]:
    """The size of each downloaded set in `out` (its files) with the working tree's `tree` bytes."""
    sizes = []
    for name in sets:
        files = tuple(sorted(p for p in (out / name).glob("*") if p.is_file()))
        sizes.append(SetSize(name, files, sum(p.stat().st_size for p in files), tree))
    return sizes


def check_sizes(
    sizes: list[SetSize], sets: dict[str, tuple[str, ...]] = SETS, limit: int = CALL_LIMIT_BYTES
) -> None:
    """Raise a ValueError naming each set that is incomplete (fewer files than requirements) or,
    with the tree, over `limit` bytes."""
    problems = []
    for size in sizes:
        if len(size.files) != len(sets[size.name]):
            problems.append(
                f"set {size.name!r}: {len(size.files)} files for {len(sets[size.name])} requirements "
                f"in {size.files[0].parent if size.files else 'its folder'} (re-run make gpu-wheels)"
            )
        if size.total_bytes > limit:
            problems.append(
                f"set {size.name!r}: {size.files_bytes / 2**20:.1f} MiB of packages + "
                f"{size.tree_bytes / 2**20:.1f} MiB of working tree + {TREE_MARGIN_BYTES / 2**20:.0f} MiB "
                f"margin > {limit / 2**20:.0f} MiB per call: move a package to another set"
            )
    if problems:
        raise ValueError("; ".join(problems))


def carry_path(out: Path, name: str) -> str:
    """Set `name`'s folder as the device tool's ``carry`` names it: relative to the repository root."""
    folder = out.resolve() / name
    return str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)


def device_command(out: Path, name: str) -> str:
    """The command to give the device tool for set `name`, with ``carry`` = [`carry_path`]."""
    parts = "" if name == "check" else f" PARTS={name}"
    return f"make gpu-check WHEELS={carry_path(out, name)} OUT_DIR=$OUT{parts}"


def device_command_without_make(out: Path, name: str) -> str:
    """What `device_command` runs, for a machine without make (the Makefile's gpu-check recipe)."""
    parts = "" if name == "check" else f" --parts {name}"
    return (
        f"scripts/gpu-check-install {carry_path(out, name)} /tmp/gpu-check-site python3 && "
        f"PYTHONPATH=/tmp/gpu-check-site PYTHONUNBUFFERED=1 timeout 560 python3 -m benchmarks.gpu_check "
        f"--device cuda --out $OUT{parts}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check-only", action="store_true", help="only check the sizes of what is there")
    args = parser.parse_args(argv)
    if not args.check_only:
        for name, requirements in SETS.items():
            dest = args.out / name
            dest.mkdir(parents=True, exist_ok=True)
            for requirement in requirements:
                subprocess.run(download_command(requirement, dest), check=True)
            for package, pattern in PRUNED.items():
                for wheel in dest.glob(f"{package}-*.whl"):
                    removed = prune_wheel(wheel, pattern)
                    if removed:
                        print(
                            f"{wheel.name}: {removed / 2**20:.1f} MiB of other accelerators' libraries removed"
                        )
    sizes = set_sizes(args.out, tree_bytes())
    try:
        check_sizes(sizes)
    except ValueError as exc:
        raise SystemExit(f"gpu-wheels: {exc}") from None
    for size in sizes:
        print(
            f"{size.name}: {len(size.files)} files, {size.files_bytes / 2**20:.1f} MiB + tree "
            f"{size.tree_bytes / 2**20:.1f} MiB = {size.total_bytes / 2**20:.1f} of {CALL_LIMIT_BYTES >> 20} MiB"
        )
        print(f"  device command, carry [{carry_path(args.out, size.name)!r}]:")
        print(f"    {device_command(args.out, size.name)}")
        print(f"  or, without make: {device_command_without_make(args.out, size.name)}")


if __name__ == "__main__":
    main()
