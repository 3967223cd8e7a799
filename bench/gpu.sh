#!/usr/bin/env bash
# GPU checks and benchmarks in one go: the GPU-marked tests (deconv on CUDA equals the CPU result to
# 1e-4 relative L2, top-9 identical), then bench/gpu_bench.py (deconv images/s and top-9 over 10,000
# images against PyTorch eager and Captum on the same GPU). Writes $OUT_DIR/gpu.json (default
# out/gpu.json) with the card's name and the onnxruntime and torch versions.
#
#   bash bench/gpu.sh                     # on a machine with an NVIDIA GPU (< 5 minutes on an H200)
#   GPU_BENCH_SMALL=1 bash bench/gpu.sh   # a quick run that checks the script (CPU fallback where no GPU)
#
# Needs python with numpy, onnx, onnxruntime-gpu, torch, pytest (captum for its rows); PYTHON picks the
# interpreter (default: .venv/bin/python, else python3). Runs from a plain checkout too: without an
# installed zfnet it imports the package from this tree (zfnet/v1 stubs must have been generated).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-out}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import zfnet.server.engine" 2>/dev/null; then
  [ -f zfnet/v1/zfnet_pb2.py ] || "$PY" -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/zfnet/v1/zfnet.proto \
    || { echo "gpu.sh: zfnet/v1 stubs missing and grpc_tools unavailable; generate them first (make zfnet/v1/zfnet_pb2.py)"; exit 2; }
  shim=$(mktemp -d)  # the package as setuptools lays it out: zfnet/{server,client,converters} from server/, client/, converters/
  mkdir "$shim/zfnet"
  for entry in zfnet/*; do ln -s "$PWD/$entry" "$shim/zfnet/"; done
  for part in server client converters; do ln -s "$PWD/$part" "$shim/zfnet/$part"; done
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONSAFEPATH=1  # the tree's own zfnet/ (no server/ inside) must not shadow the shim from the working directory
  "$PY" -c "import zfnet.server.engine" || { echo "gpu.sh: cannot import zfnet (missing dependencies?)"; exit 2; }
fi

card=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
  echo "gpu.sh: $card"
else
  echo "gpu.sh: no NVIDIA GPU found (nvidia-smi missing or no device): the GPU tests skip and the benchmarks run on the CPU"
fi

"$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/server/test_gpu.py --junitxml "$OUT_DIR/gpu-tests.xml"
tests_rc=$?

small=()
[ -n "${GPU_BENCH_SMALL:-}" ] && [ "${GPU_BENCH_SMALL}" != 0 ] && small=(--small)
"$PY" bench/gpu_bench.py "${small[@]}" --out "$OUT_DIR/gpu.json" --card "$card" --junit "$OUT_DIR/gpu-tests.xml" --tests-rc "$tests_rc"
bench_rc=$?
echo "gpu.sh: tests exit $tests_rc (5: none ran), bench exit $bench_rc; $OUT_DIR/gpu.json"
[ "$bench_rc" -eq 0 ] && { [ "$tests_rc" -eq 0 ] || [ "$tests_rc" -eq 5 ]; }
