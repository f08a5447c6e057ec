# The two commands of the README (`make demo`, `make test`) set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test test-fast lint clean bench experiments ablations synthvid-results synthvid-inputs gpu-wheels gpu-check

setup: $(STAMP)

# deepspeed's pin, read from pyproject.toml so that it is written once.
DEEPSPEED := $(shell sed -n 's/^ *"\(deepspeed==[^"]*\)".*/\1/p' pyproject.toml)
# The DeepSpeed ops that runs load (trainer/jit_ops.py): CPU Adam (ZeRO-Offload), FusedAdam (the
# other ds_configs) and the CPU shared-memory collectives (every run on CPU). Built into the
# install, they are imported, never JIT-built at run time (a minute each on 2 cores, and a build
# killed half-way leaves a lock that hangs later runs). DS_BUILD_OPS=0: nothing else, whatever the
# caller's environment says.
# DS_ENABLE_NINJA=1 (with the venv's ninja on PATH) compiles each op's sources in parallel, which
# deepspeed's setup.py turns off for prebuilt ops by default: 126 s instead of 218 s on 2 cores.
DS_BUILD_ENV := DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 DS_BUILD_SHM_COMM=1 DS_ENABLE_NINJA=1

# torch first, pinned to the CPU wheel the machines carry: otherwise a dependency's bare `torch`
# pulls the newest CUDA build (several GB). deepspeed is compiled against that torch, hence
# --no-build-isolation; --no-binary and --no-cache-dir because a deepspeed wheel from an index or
# from pip's cache (built earlier without ops) would be installed silently instead of a build with
# them; --no-deps as its dependencies come with ".[dev]" next. The build (~2 min) is skipped
# when the pinned deepspeed is there with its ops, i.e. on a re-run after a pyproject.toml edit.
# setup.py skips an op it finds incompatible with a warning only, so trainer.jit_ops
# --require-prebuilt then checks that every op the ds_configs load imports from the install, and
# fails set-up otherwise.
$(STAMP): pyproject.toml
	$(if $(DEEPSPEED),,$(error pyproject.toml pins no "deepspeed==<version>"))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0 ninja
	@if $(PY) -m pip show deepspeed 2>/dev/null | grep -qx "Version: $(patsubst deepspeed==%,%,$(DEEPSPEED))" \
		&& $(PY) -m trainer.jit_ops --require-prebuilt >/dev/null 2>&1; then \
		echo "$(DEEPSPEED) with prebuilt ops: already installed"; \
	else \
		echo "building $(DEEPSPEED) with its ops prebuilt ($(DS_BUILD_ENV))"; \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(DS_BUILD_ENV) $(PY) -m pip install -q --force-reinstall --no-deps --no-build-isolation \
			--no-binary deepspeed --no-cache-dir "$(DEEPSPEED)" || exit 1; \
	fi
	$(PY) -m pip install -q --no-build-isolation ".[dev]"
	$(PY) -m trainer.jit_ops --require-prebuilt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepspeed train.py --config configs/demo.yaml

# The Debian packages of tests/slurm (a real SLURM cluster), apt-installed when missing; first, so
# that a machine without root or sudo says so before the set-up's minutes.
system-packages:
	scripts/install-system-packages

# Two pytest workers (pytest-xdist): most of the suite is processes starting (a training process
# spends ~11 s importing torch, deepspeed, peft and mlflow) and launchers waiting on their ranks,
# which leaves a core idle; on 2 cores (AVX2) the suite took 1512 s instead of 2033 s in one process.
# A module's tests stay on one worker and xdist_group marks join modules (tests/conftest.py's
# scheduler; --dist loadgroup adds the marks' names to the test ids it reads): tests/slurm start
# one SLURM cluster per session.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: system-packages $(STAMP)
	$(PYTEST)

test-fast: system-packages $(STAMP)
	$(PYTEST) -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache

# CPU benchmark set (<= 20 min on 2 cores): each script writes benchmarks/results/<name>-cpu.json,
# then benchmarks.report rewrites the README's Performance section from all the JSON files.
# train_memory runs twice: the tiny preset for every method, the ~1B preset for the issue's goal
# (qlora <= 0.5 x lora). On a GPU: python -m benchmarks.<name> --device cuda. The 1b run in bf16
# (the GPU's dtype) is left out: ~25 min on a CPU without native bf16 (--dtype bfloat16).
BENCH := quant_memory frame_selection pipeline temporal_lora step_overhead train_memory \
	"train_memory --preset 1b --methods lora,qlora,temporal_qlora,qlora8" scaling inference
bench: $(STAMP)
	@for b in $(BENCH); do \
		echo "== benchmarks.$$b --device cpu"; start=$$(date +%s); \
		$(PY) -m benchmarks.$$b --device cpu || exit 1; echo "== $$b: $$(( $$(date +%s) - start )) s"; done
	$(PY) -m benchmarks.report

# SynthVid results (configs/synthvid/): the observability report (no training), pretrain a tiny
# base, sweep every method and ablation (5 seeds, two runs side by side) into MLflow, compare
# (paired differences, the pre-registered claims) and write the README's results section
# (<= 60 min on 2 CPU cores). `make experiments QUICK=1`: the same pipeline with 1 seed, 3 steps
# per run and 12 eval clips, everything (assets, MLflow store, results, a README copy) under
# SV_ROOT (default outputs/synthvid-quick/), to check it end to end in minutes.
ifdef QUICK
SV_ROOT := outputs/synthvid-quick
SV_EXPERIMENT := synthvid-quick
SV_TRACKING := sqlite:///$(SV_ROOT)/mlflow.db
SV_QUICK_SET := assets_dir=$(SV_ROOT)/assets tracking.artifact_location=$(SV_ROOT)/mlartifacts
SV_PRETRAIN_ARGS := train.steps=10 data.synthvid.num_train=32 data.synthvid.num_eval=16 eval.num_samples=16 output_dir=$(SV_ROOT)/pretrain tracking.uri=$(SV_TRACKING) tracking.experiment=synthvid-quick-pretrain $(SV_QUICK_SET)
SV_SWEEP_ARGS := --seeds 1 --tracking-uri $(SV_TRACKING) --set train.steps=3 train.eval_every=0 eval.num_samples=12 data.synthvid.num_train=32 data.synthvid.num_eval=12 model.name_or_path=$(SV_ROOT)/pretrain/adapter $(SV_QUICK_SET)
SV_OBSERVABILITY_ARGS := --num 4 --n 32 --k 2 4
SV_RESULTS := $(SV_ROOT)/results
SV_README := $(SV_ROOT)/README.md
else
SV_ROOT := outputs/synthvid
SV_EXPERIMENT := synthvid
SV_TRACKING := sqlite:///outputs/synthvid/mlflow.db
SV_RESULTS := docs/results/synthvid
SV_README := README.md
endif

# One OpenMP thread per run: the tiny model gains nothing from a second one, and two threads that
# share 2 cores with the data-loader worker spin against each other (measured on SynthVid pretrain:
# 0.18 s/step with one thread against 1-4 s/step with the default two, while another job ran).
experiments ablations synthvid-inputs $(SV_ROOT)/pretrain/adapter/config.json: export OMP_NUM_THREADS := 1

# A new base makes the fine-tunes of the old one stale: without the rm, their finished checkpoints
# would be resumed (train.resume=auto) and only re-evaluated.
$(SV_ROOT)/pretrain/adapter/config.json: | $(STAMP)
	rm -rf $(SV_ROOT)/sweeps
	$(PY) train.py --config configs/synthvid/pretrain.yaml $(SV_PRETRAIN_ARGS)

# What needs no base model, beside the pretraining (make -j2 below; -o: this make has brought the
# set-up stamp up to date, or was told to take it as current): its one thread and its data
# worker leave most of the second core idle, and the sweep's SynthVid shards (25 folders of 512
# training clips) otherwise cost its first run of each task and seed ~22 s of video encoding.
# nice: only what the pretraining leaves; at equal priority the three processes shared the 2 cores
# and the pretraining's steps took 0.134 instead of 0.098 s.
synthvid-inputs: | $(STAMP)
	nice -n 19 $(PY) -m data.observability --out $(SV_RESULTS)/observability $(SV_OBSERVABILITY_ARGS)
	nice -n 19 $(PY) -m trainer.experiments.sweep --prepare-data --sweep configs/synthvid/experiments.yaml --experiment $(SV_EXPERIMENT) --out-root $(SV_ROOT)/sweeps $(SV_SWEEP_ARGS)

# The sweep file's stage-2 groups: the method ablations (rank allocators on order and shift, the
# temporal controls, gate mode, placement, weight formats), run by `make ablations` on the base that
# `make experiments` pretrained; `make experiments` runs every other group.
SV_ABLATIONS := allocation,allocation_shift,temporal_controls,gate_mode,placement,bits

# The sweep's failed runs are listed (and recorded in MLflow); the comparison of the others goes on.
experiments: $(STAMP)
	$(MAKE) --no-print-directory -j2 -o $(STAMP) $(SV_ROOT)/pretrain/adapter/config.json synthvid-inputs
	-$(PY) -m trainer.experiments.sweep --sweep configs/synthvid/experiments.yaml --experiment $(SV_EXPERIMENT) --out-root $(SV_ROOT)/sweeps --jobs 2 --skip-groups $(SV_ABLATIONS) $(SV_SWEEP_ARGS)
	$(MAKE) --no-print-directory -o $(STAMP) synthvid-results

# The comparison reads every run of the experiment: after `make ablations` it holds both stages.
ablations: $(STAMP)
	$(MAKE) --no-print-directory -o $(STAMP) $(SV_ROOT)/pretrain/adapter/config.json
	-$(PY) -m trainer.experiments.sweep --sweep configs/synthvid/experiments.yaml --experiment $(SV_EXPERIMENT) --out-root $(SV_ROOT)/sweeps --jobs 2 --groups $(SV_ABLATIONS) $(SV_SWEEP_ARGS)
	$(MAKE) --no-print-directory -o $(STAMP) synthvid-results

synthvid-results: | $(STAMP)
	$(PY) -m trainer.experiments.compare --experiment $(SV_EXPERIMENT) --tracking-uri $(SV_TRACKING) --out $(SV_RESULTS) --split-by data.synthvid.task --sweep configs/synthvid/experiments.yaml
	$(if $(QUICK),cp README.md $(SV_README))
	$(PY) -m trainer.experiments.results_readme --comparison $(SV_RESULTS) --readme $(SV_README)

# The prepared GPU check (benchmarks/gpu_check.py; README "Running the GPU check").
# `make gpu-wheels` (here, with network): the packages the GPU machine lacks, as sets of at most
# 64 MiB with the working tree, into .gpu-wheels/<set>/; it prints the device command of each set.
# `make gpu-check` (there): installs WHEELS into a temporary site, offline, and runs every part in
# one process tree (python3: the machine's own Python, which holds its torch); the JSON goes to
# OUT_DIR (the device tool's $OUT when set). DEVICE=cpu: the same script at its smallest sizes with
# .venv, nothing installed (tests/benchmarks/test_gpu_check.py runs it in the suite).
GPU_WHEELS := .gpu-wheels
WHEELS ?= $(GPU_WHEELS)/check
DEVICE ?= cuda
OUT_DIR ?= $(if $(OUT),$(OUT),outputs/gpu-check)
GPU_SITE ?= /tmp/gpu-check-site
GPU_PYTHON ?= python3
# The device tool's one-call limit is 10 minutes: the parts' budget (none is begun after 480 s) and
# a hard stop before the limit, so that what was measured still comes back.
GPU_TIMEOUT_S ?= 560

gpu-wheels: $(STAMP)
	$(PY) -m benchmarks.gpu_wheels --out $(GPU_WHEELS)

gpu-check:
ifeq ($(DEVICE),cpu)
	$(PY) -m benchmarks.gpu_check --device cpu --small --out $(OUT_DIR) $(if $(PARTS),--parts $(PARTS))
else
	scripts/gpu-check-install $(WHEELS) $(GPU_SITE) $(GPU_PYTHON)
	PYTHONPATH=$(GPU_SITE) PYTHONUNBUFFERED=1 timeout $(GPU_TIMEOUT_S) $(GPU_PYTHON) -m benchmarks.gpu_check \
		--device $(DEVICE) --out $(OUT_DIR) $(if $(PARTS),--parts $(PARTS))
endif
