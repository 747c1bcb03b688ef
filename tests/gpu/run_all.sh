#!/usr/bin/env bash
# Every GPU check in one pass, sized for a short lease of one GPU (a command of at most 10 minutes):
# the Triton kernels (check_kernels.py --quick), a 671B-width record with FP8 weights resident
# (check_record.py, 4 MoE layers, 16k tokens; its kernels judged per GEMM), the routing of the
# narrow model judged against bf16 (check_record.py --narrow), the sharded model against the whole
# one (check_parallel.py, 2 ranks on one GPU over gloo), the record and spec jobs on the bundled
# model against the same jobs on the CPU (check_jobs.py) and the test suite's CUDA tests (pytest:
# tests/model/test_kernels.py; it skips what needs the CPU interpreter of triton 3.7+). Each step has
# its own time limit and writes its log under $OUT as it goes, so what finished comes back even if a
# later step runs out of time.
#
#     bash tests/gpu/run_all.sh          # on a CUDA machine: python3 with torch, triton, pyarrow, numpy,
#                                        # pandas, safetensors and tokenizers (the project is not installed)
#     bash tests/gpu/run_all.sh parallel narrow   # only these steps, in this order
#     bash tests/gpu/run_all.sh --cpu    # the same steps in each check's CPU mode: checks this script
#                                        # (the CPU's record step is the narrow model already)
#
# Exits 0 when every step passed; the logs say which did not. PYTHON names another interpreter.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-checks}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
failed=()
mode=gpu
if [ "${1:-}" = "--cpu" ]; then
    mode=cpu
    shift
fi
all_steps="kernels record parallel jobs"  # this mode's steps, in their default order (run_step runs them)
[ "$mode" = gpu ] && all_steps="kernels record narrow parallel jobs pytest"
steps=("$@")
[ "${#steps[@]}" -eq 0 ] && read -ra steps <<< "$all_steps"
for s in "${steps[@]}"; do
    case " $all_steps " in
        *" $s "*) ;;
        *) echo "run_all.sh: no step '$s' in $mode mode (steps: $all_steps)" >&2
           exit 2 ;;
    esac
done

step() {  # NAME SECONDS COMMAND...: run COMMAND under a time limit, its output into $OUT/NAME.log
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*" | tee "$OUT/$name.log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "== $name: stopped at its ${limit} s limit" | tee -a "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

# the versions from the installed packages' metadata; torch itself is imported (seconds) only to ask
# whether it sees the GPU, which the CPU mode does not need
"$PY" - "$mode" <<'EOF' 2>&1 | tee "$OUT/env.log"
import platform, sys
from importlib.metadata import PackageNotFoundError, version
if sys.argv[1:] == ["cpu"]:
    gpu = "CPU mode"
else:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, {gpu}")
for name in ("torch", "triton", "pyarrow", "safetensors", "tokenizers", "numpy", "pandas"):
    try:
        print(f"{name} {version(name)}")
    except PackageNotFoundError:
        print(f"{name}: MISSING")
EOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/env.log"
fi

run_step() {  # NAME: the step in this mode
    case "$mode:$1" in
        cpu:kernels) step kernels 120 env TRITON_INTERPRET=1 "$PY" tests/gpu/check_kernels.py --cpu-smoke ;;
        cpu:record) step record 300 "$PY" tests/gpu/check_record.py --cpu ;;
        cpu:parallel) step parallel 180 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 \
            tests/gpu/check_parallel.py --cpu --repeats 0 ;;
        cpu:jobs) step jobs 120 "$PY" tests/gpu/check_jobs.py --cpu ;;
        gpu:kernels) step kernels 100 "$PY" tests/gpu/check_kernels.py --quick ;;
        gpu:record) step record 90 "$PY" tests/gpu/check_record.py --moe-layers 4 --tokens 16384 ;;
        gpu:narrow) step narrow 60 "$PY" tests/gpu/check_record.py --narrow ;;
        gpu:parallel) step parallel 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 \
            tests/gpu/check_parallel.py --backend gloo ;;
        gpu:jobs) step jobs 150 "$PY" tests/gpu/check_jobs.py ;;
        gpu:pytest) step pytest 60 "$PY" -m pytest -q -o addopts=-ra -p no:cacheprovider tests/model/test_kernels.py ;;
    esac
}
for s in "${steps[@]}"; do
    run_step "$s"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $OUT)"
    exit 1
fi
echo "every step passed (logs in $OUT)"
