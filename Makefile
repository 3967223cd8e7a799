# zfnet: `make demo` runs the main job on the bundled model and images; `make test` runs the tests.
# Each installs what it needs into ./.venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOOTSTRAP := $(VENV)/.bootstrap
STAMP := $(VENV)/.installed
MODEL := models/zfnet-cifar10.onnx
SAMPLES := samples/cifar10
DEMO_IMAGES := $(sort $(wildcard $(SAMPLES)/*/0000.jpg))
NODE_EXAMPLE := examples/node

.PHONY: install demo test test-fast typecheck docs bench bench-startup bench-ray bench-gpu soak train clean node-deps browser

install: $(STAMP)

# torch first, pinned: a looser requirement pulls a CUDA build of several GB.
$(BOOTSTRAP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	touch $@

# The editable install generates the gRPC stubs and the Caffe message classes from their .proto
# files (hatch_build.py); they are never committed. A changed .proto reinstalls.
$(STAMP): $(BOOTSTRAP) pyproject.toml hatch_build.py proto/zfnet/v1/zfnet.proto converters/zfnet/converters/caffe/caffe.proto
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/zfclient deconv --model $(MODEL) --layer 4 --top 9 --out out/demo --force $(foreach f,$(DEMO_IMAGES),--image $(f))
	$(VENV)/bin/zfclient top --model $(MODEL) --layer 1 --layer 5 --data $(SAMPLES) --out out/demo/top
	@echo "demo: deconv reconstructions of layer 4 (one labelled grid per image) are in out/demo/;"
	@echo "      the top-9 of every feature map of layers 1 and 5 over the 200 bundled images: open out/demo/top/index.html"

test: install node-deps browser typecheck docs
	$(VENV)/bin/pytest -q

# The docs site (mkdocs.yml) into site/, in strict mode: a broken link or anchor, a page left out of the
# nav or a nav entry without its page fails. The reference pages are generated from the code as it builds.
docs: install
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --clean --quiet

# The quick loop while editing: every test but those marked slow (over about 5 s here); CI runs them all.
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

# pyright in basic mode over the whole code ([tool.pyright] in pyproject.toml: include, venv); `make test` runs it first.
typecheck: install
	$(VENV)/bin/pyright

# The Node.js client example's packages, exactly as locked (its test skips without Node.js and npm).
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		[ $(NODE_EXAMPLE)/node_modules/.package-lock.json -nt $(NODE_EXAMPLE)/package-lock.json ] || \
		npm ci --prefix $(NODE_EXAMPLE) --ignore-scripts --no-audit --no-fund; \
	else echo "npm not found: the Node.js client test will be skipped"; fi

# The top-k report test opens the report in a real headless Chromium (Debian's chromium and
# chromium-driver): install them when missing and apt-get may run; elsewhere that test skips, saying why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the report test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium; the report's browser test will skip"; \
	  else echo "chromium or chromedriver missing and apt-get cannot run here; the report's browser test will skip"; fi; \
	fi

bench: install browser
	$(PY) bench/deconv_bench.py
	$(PY) bench/top_bench.py
	$(PY) bench/occlusion_bench.py
	$(PY) bench/transport_bench.py
	$(PY) bench/features_bench.py
	$(PY) bench/attribution_bench.py
	$(PY) bench/explorer_bench.py
	$(PY) bench/imagenet_bench.py

# A real zfserver on loopback under load, hostile requests and uploads at once (a few minutes);
# bounded in count and time, figures in out/soak.json.
soak: install
	$(PY) bench/soak.py

# zfclient --help, and an in-process call's model preparation with an empty and a warm cache
bench-startup: install
	$(PY) bench/startup_bench.py

# Top-9 on a local Ray with 1 and 2 workers against the single-process job (docs/operating/ray.md).
bench-ray: install
	$(PY) bench/ray_bench.py

# On a machine with an NVIDIA GPU: the GPU tests and benchmarks, out/gpu.json (docs/operating/gpu.md).
bench-gpu: install
	bash bench/gpu.sh

# Retrain the bundled reference model (about 30 minutes on 2 CPU cores) and re-export it: this target
# OVERWRITES models/zfnet-cifar10.pt and $(MODEL) on purpose; `zfclient train` alone writes under out/train/.
train: install
	$(VENV)/bin/zfclient train --data ../shared/data/cifar10 --checkpoint models/zfnet-cifar10.pt --force
	$(VENV)/bin/zfclient convert torch zfnet-cifar10 --weights models/zfnet-cifar10.pt -o $(MODEL) --force

clean:
	rm -rf $(VENV) out dist site $(NODE_EXAMPLE)/node_modules
	find core converters -name '*_pb2*.py*' -delete
