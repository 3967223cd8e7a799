# zfnet: `make demo` runs the main job on the bundled model and images; `make test` runs the tests.
# Each installs what it needs into ./.venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOOTSTRAP := $(VENV)/.bootstrap
STAMP := $(VENV)/.installed
STUBS := zfnet/v1/zfnet_pb2.py
CAFFE_STUBS := converters/caffe/caffe_pb2.py
MODEL := models/zfnet-cifar10.onnx
SAMPLES := samples/cifar10
DEMO_IMAGES := $(sort $(wildcard $(SAMPLES)/*/0000.jpg))

.PHONY: install demo test bench train clean

install: $(STAMP)

# torch first, pinned: a looser requirement pulls a CUDA build of several GB. grpcio-tools next,
# to generate the stubs that the package install needs.
$(BOOTSTRAP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 'grpcio-tools>=1.85,<1.86'
	touch $@

$(STUBS): proto/zfnet/v1/zfnet.proto $(BOOTSTRAP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/zfnet/v1/zfnet.proto
	touch zfnet/v1/__init__.py

$(CAFFE_STUBS): converters/caffe/caffe.proto $(BOOTSTRAP)
	$(PY) -m grpc_tools.protoc -Iconverters/caffe --python_out=converters/caffe converters/caffe/caffe.proto

$(STAMP): pyproject.toml $(STUBS) $(CAFFE_STUBS)
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

demo: install
	$(VENV)/bin/zfclient deconv --model $(MODEL) --layer 4 --top 9 --out out/demo $(foreach f,$(DEMO_IMAGES),--image $(f))
	@echo "demo: deconv reconstructions of layer 4 (one labelled grid per image) are in out/demo/"

test: install
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/deconv_bench.py
	$(PY) bench/features_bench.py

# Retrain the bundled reference model (about 30 minutes on 2 CPU cores) and re-export it.
train: install
	$(VENV)/bin/zfclient train --data ../shared/data/cifar10 --checkpoint models/zfnet-cifar10.pt
	$(VENV)/bin/zfclient convert torch zfnet-cifar10 --weights models/zfnet-cifar10.pt -o $(MODEL)

clean:
	rm -rf $(VENV) out zfnet/v1 $(CAFFE_STUBS)
