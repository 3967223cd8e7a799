# zfnet: `make demo` runs the main job on the bundled model and images; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := zfnet/v1/zfnet_pb2.py
CAFFE_STUBS := converters/caffe/caffe_pb2.py
MODEL := models/zfnet-cifar10.onnx
SAMPLES := samples/cifar10

.PHONY: install stubs demo test bench train clean

install: $(STAMP) stubs

# torch first, pinned: a looser requirement pulls a CUDA build of several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

stubs: $(STUBS) $(CAFFE_STUBS)

$(STUBS): proto/zfnet/v1/zfnet.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/zfnet/v1/zfnet.proto
	touch zfnet/v1/__init__.py

$(CAFFE_STUBS): converters/caffe/caffe.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iconverters/caffe --python_out=converters/caffe converters/caffe/caffe.proto

demo: install
	$(VENV)/bin/zfclient deconv --model $(MODEL) --layer 4 --top 9 --out out/demo \
		$(foreach f,$(sort $(wildcard $(SAMPLES)/*/0000.jpg)),--image $(f))
	@echo "demo: deconv grids for layer 4 are in out/demo/"

test: install
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/deconv_bench.py

# Retrain the bundled reference model (about 30 minutes on 2 CPU cores) and re-export it.
train: install
	$(VENV)/bin/zfclient train --data ../shared/data/cifar10 --checkpoint models/zfnet-cifar10.pt
	$(VENV)/bin/zfclient convert torch zfnet-cifar10 --weights models/zfnet-cifar10.pt -o $(MODEL)

clean:
	rm -rf $(VENV) out zfnet/v1/*_pb2*.py* $(CAFFE_STUBS)
