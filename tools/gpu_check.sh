#!/usr/bin/env bash
# One command for a GPU machine without internet that has torch (CUDA), ninja, nvcc and pytest: about
# 6 minutes on an H100/H200 (the step timeouts sum to 560 s, under one device call's 600 s). Writes one
# report, ${OUT:-.}/gpu_report.md
# (logs and timings.json beside it), section by section, so that a step that fails or times out leaves
# the others in place:
#   1. build the op's CUDA kernels just in time for this machine's torch and GPU;
#   2. the CUDA tests of every tests/ file that has them (op parity in four dtypes, gradcheck, mixed
#      precision, deterministic mode, bounds, DCN when present);
#   3. tools/gpu_report.py: GPU times (CUDA events) for N = 1, 2, 8, encoder and decoder shapes, float32
#      and bfloat16; D = 1025 / 2048; a value of > 2**31 elements; autocast; torch.compile; two
#      Deformable DETR training steps, native vs reference;
#   4. the DCNv2 benchmark (ResNet-101 stage 3 / 4 shapes at 900x1600, float32 and bfloat16);
#   5. compute-sanitizer (memcheck) on one tiny forward + backward, when installed.
# REHEARSE=1 runs the same control flow on a CPU machine (CPU kernels, tiny sizes, CUDA steps skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
mkdir -p "$out"
report="$out/gpu_report.md"
rehearse="${REHEARSE:-0}"
start=$(date +%s)

section() {  # section TITLE EXIT_CODE LOG LINES: append a titled tail of LOG to the report
  { echo; echo "## $1 (exit $2, $(( $(date +%s) - start )) s since start)"; echo '```'; tail -n "$4" "$3"; echo '```'; } >> "$report"
}

if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_HOME=/usr/local/cuda
  elif command -v nvcc > /dev/null; then
    CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  fi
  [ -n "${CUDA_HOME:-}" ] && export CUDA_HOME
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  if [ "$rehearse" = 1 ]; then
    TORCH_CUDA_ARCH_LIST=9.0
  else
    TORCH_CUDA_ARCH_LIST="$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  fi
  export TORCH_CUDA_ARCH_LIST
fi
export DEFORMBEV_OPS_JIT=1                       # build here, for this machine's torch
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
native=cuda
[ "$rehearse" = 1 ] && native=cpu

{
  echo "# GPU check of the deformable attention op"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 4
  python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST REHEARSE=$rehearse"
  command -v compute-sanitizer || echo "compute-sanitizer: not installed"
  echo '```'
} > "$report"

timeout 200 python -c "import ops; b = ops.available_backends(); print('backends:', b); assert '$native' in b" \
  > "$out/build.log" 2>&1
build_rc=$?
section "Build" "$build_rc" "$out/build.log" 20

mapfile -t cuda_test_files < <(grep -l -E "mark\.cuda|cuda_backend" tests/test_*.py)
timeout 100 python -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors \
  "${cuda_test_files[@]}" > "$out/tests.log" 2>&1
tests_rc=$?
section "CUDA tests: ${cuda_test_files[*]}" "$tests_rc" "$out/tests.log" 25

report_flags=()
[ "$rehearse" = 1 ] && report_flags+=(--rehearse)
timeout 150 python tools/gpu_report.py --report "$report" ${report_flags[@]+"${report_flags[@]}"} > "$out/gpu_report.log" 2>&1
report_rc=$?
section "tools/gpu_report.py" "$report_rc" "$out/gpu_report.log" 12

dcn_rc=0
if [ "$rehearse" != 1 ]; then
  timeout 50 python tools/benchmark_ops.py --device cuda --dtypes float32 bfloat16 --cases dcn_stage3 dcn_stage4 \
    > "$out/dcn_benchmark.log" 2>&1
  dcn_rc=$?
  section "DCNv2 benchmark (ResNet-101 stage 3 / 4 at 900x1600)" "$dcn_rc" "$out/dcn_benchmark.log" 20
fi

sanitizer_rc=0
sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
if [ "$rehearse" != 1 ] && [ -x "$sanitizer" ]; then
  timeout 60 "$sanitizer" --tool memcheck --error-exitcode 1 python tools/gpu_report.py --sanitizer-case \
    > "$out/sanitizer.log" 2>&1
  sanitizer_rc=$?
  section "compute-sanitizer memcheck (tiny forward + backward)" "$sanitizer_rc" "$out/sanitizer.log" 20
else
  echo -e "\n## compute-sanitizer: skipped (rehearsal or not installed)" >> "$report"
fi

echo -e "\nTotal $(( $(date +%s) - start )) s" >> "$report"
echo "report: $report"
cat "$report"
[ "$build_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$report_rc" -eq 0 ] && [ "$dcn_rc" -eq 0 ] && [ "$sanitizer_rc" -eq 0 ]
