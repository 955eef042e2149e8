#!/usr/bin/env bash
# One command for a GPU machine without internet that has torch (CUDA), ninja, nvcc and pytest:
# builds the op with CUDA, runs the CUDA tests (parity with `reference` in four dtypes, gradcheck in
# float64) and the op benchmark (CUDA vs reference; forward and forward+backward; float32, bfloat16),
# and writes one report: ${OUT:-.}/gpu_report.md (plus benchmark JSON and logs beside it).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
mkdir -p "$out"
report="$out/gpu_report.md"

if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  export CUDA_HOME
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
export DEFORMBEV_MSDA_JIT=1                       # build here, for this machine's torch
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"

{
  echo "# GPU check of the deformable attention op"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo '```'
} > "$report"

start=$(date +%s)
timeout 240 python -c 'import ops; b = ops.available_backends(); print("backends:", b); assert "cuda" in b' \
  > "$out/build.log" 2>&1
build_rc=$?
{ echo; echo "## Build ($(( $(date +%s) - start )) s, exit $build_rc)"; echo '```'; tail -n 20 "$out/build.log"; echo '```'; } >> "$report"

timeout 180 python -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py > "$out/tests.log" 2>&1
tests_rc=$?
{ echo; echo "## CUDA tests (exit $tests_rc)"; echo '```'; tail -n 15 "$out/tests.log"; echo '```'; } >> "$report"

timeout 120 python tools/benchmark_ops.py --device cuda --dtypes float32 bfloat16 --repeats 20 --warmup 3 \
  --json "$out/benchmark_ops_cuda.json" > "$out/benchmark.log" 2>&1
bench_rc=$?
{ echo; echo "## Benchmark (exit $bench_rc)"; echo; cat "$out/benchmark.log"; } >> "$report"

echo "report: $report (total $(( $(date +%s) - start )) s)"
cat "$report"
[ "$build_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
