#!/usr/bin/env bash
# One prepared run on a CUDA GPU machine, offline, well inside 8 minutes (H100/H200):
#   1. environment: GPU, driver, python, torch, triton, CUDA, cuDNN, git commit (top of the log)
#   2. pip install --no-index --no-build-isolation --no-deps -e .   (torch, triton, torchdiffeq,
#      pytest and pytest-benchmark must already be installed; nothing is downloaded; diffusers
#      is optional: without it the diffusers-unet rows are skipped, saying why)
#   3. the test suite on the GPU (TRITON_INTERPRET unset): python -m pytest tests -q
#   4. pytest bench/ (pytest-benchmark, the compile baselines left to step 5)
#   5. python -m bench: every workload, every baseline, with a --deadline so that it writes its
#      JSON, markdown and PNG before its time limit, whatever it reached
# Everything goes to ONE folder: $OUT if set, else bench/results/gpu-<date>-<commit>/:
#   gpu_check.log (all output, through tee), tests-junit.xml, pytest-benchmark.json,
#   <gpu>-<date>-<commit>.{json,md,png}
# Each stage runs under `timeout`; output is unbuffered, so a stage cut short still leaves its
# log. Usage:
#   bash bench/gpu_check.sh             # the full run
#   bash bench/gpu_check.sh --quick     # python -m bench --quick (no max-autotune, smaller steps)
#   bash bench/gpu_check.sh --dry-run   # print what would run, run nothing (GPU_CHECK_DRY_RUN=1)
# Environment: PYTHON (default: python, else python3), OUT, GIT_COMMIT (when there is no .git),
# PYTEST_WORKERS (pytest-xdist workers for the tests, default 4; 0: none), GPU_CHECK_ALLOW_CPU=1
# (run the stages without a GPU: only to try the script itself on a CPU machine).
set -uo pipefail

usage() {
  # the comment block at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

dry_run=${GPU_CHECK_DRY_RUN:-0}
quick=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --quick) quick=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "gpu_check.sh: unknown argument '$arg' (expected --dry-run, --quick or --help)" >&2
      exit 2
      ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
root=$(pwd)

python=${PYTHON:-}
if [[ -z $python ]]; then
  if command -v python >/dev/null 2>&1; then python=python; else python=python3; fi
fi
commit=${GIT_COMMIT:-$(git rev-parse --short=8 HEAD 2>/dev/null || echo nocommit)}
out=${OUT:-$root/bench/results/gpu-$(date -u +%Y-%m-%d)-$commit}
log=$out/gpu_check.log

# Stage limits in seconds. Worst case, every stage at its limit plus 10 s to die:
# 15 + 45 + 100 + 70 + 160 + 5 x 10 = 440 s, 7.3 minutes; a normal run ends sooner.
# pytest bench times eager and fused of every workload, the two 35.7M-parameter U-Net steps
# (ddpm-step, diffusers-unet) and both solvers (node-step with timeaware's solver, ode-solve)
# included. In python -m bench the compile rows run last, after the cheap solver rows,
# workload by workload in table order, so the deadline cuts the U-Net compiles (diffusers-unet
# last) before anything else; python -m bench --only diffusers-unet measures that one alone.
t_env=15
t_install=45
t_tests=100
t_bench_pytest=70
t_bench=160
# python -m bench stops measuring at its --deadline and then writes its files (a few seconds)
bench_deadline=$((t_bench - 25))

workers=${PYTEST_WORKERS:-4}
xdist=()
if [[ $workers != 0 ]] && "$python" -c "import xdist" >/dev/null 2>&1; then
  xdist=(-n "$workers" --dist loadfile)
fi
quick_args=()
if ((quick)); then quick_args=(--quick); fi

unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1

say() {
  if ((dry_run)); then
    printf '%s\n' "$*"
  else
    printf '%s\n' "$*" | tee -a "$log"
  fi
}

failed=()
shown=""  # what stage prints instead of its command line, when set (a long python -c)
# stage NAME LIMIT SIGNAL COMMAND...: run COMMAND under `timeout` (SIGNAL at LIMIT seconds,
# SIGKILL 10 s later), its output appended to the log
stage() {
  local name=$1 limit=$2 signal=$3
  shift 3
  say ""
  say "== $name (limit ${limit}s): ${shown:-$(printf '%q ' "$@")}"
  shown=""
  if ((dry_run)); then return 0; fi
  local t0=$SECONDS rc
  timeout --signal="$signal" --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local note=""
  if [[ $rc == 124 || $rc == 137 ]]; then note=" (TIMED OUT)"; fi
  say "== $name: exit $rc after $((SECONDS - t0)) s$note"
  if [[ $rc != 0 ]]; then failed+=("$name (exit $rc)"); fi
  return 0
}

env_py='
import os, platform
import torch
print("python", platform.python_version(), platform.platform())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN",
      torch.backends.cudnn.version() if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: does not import:", e)
for dist in ("torchdiffeq", "diffusers", "pytest", "pytest-benchmark", "pytest-xdist"):
    try:
        from importlib.metadata import version
        print(dist, version(dist))
    except Exception:
        print(dist, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, "| sm", "%d.%d" % (p.major, p.minor), "|", p.multi_processor_count,
          "SMs |", round(p.total_memory / 2**30), "GiB")
else:
    print("device: NO CUDA DEVICE")
    raise SystemExit(0 if os.environ.get("GPU_CHECK_ALLOW_CPU") == "1" else 3)
'

if ((!dry_run)); then
  mkdir -p "$out" || exit 2
  : >"$log"
fi
say "gpu_check.sh: commit $commit, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), output folder $out"
say "python: $python; TRITON_INTERPRET unset; PYTHONUNBUFFERED=1"
if ((dry_run)); then say "(dry run: nothing is run)"; fi
if ((!dry_run)) && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 |
    tee -a "$log"
fi
shown="$python -c <print the GPU, driver, python, torch, triton, CUDA and cuDNN versions>"
stage "environment" "$t_env" TERM "$python" -c "$env_py"
if ((!dry_run)) && [[ ${failed[*]-} == *environment* ]]; then
  say "no usable CUDA device or torch: stopping here"
  exit 3
fi
stage "install" "$t_install" TERM \
  "$python" -m pip install --no-index --no-build-isolation --no-deps -e .
# SIGINT: pytest stops and still prints the summary of what ran
stage "tests" "$t_tests" INT \
  "$python" -m pytest tests -q -p no:cacheprovider --durations=15 ${xdist[@]+"${xdist[@]}"} \
  --junitxml="$out/tests-junit.xml"
stage "pytest bench" "$t_bench_pytest" INT \
  "$python" -m pytest bench -q -p no:cacheprovider -k "not compile" \
  --benchmark-json="$out/pytest-benchmark.json"
# SIGTERM: python -m bench writes what it measured before it exits
stage "bench" "$t_bench" TERM \
  "$python" -m bench --out "$out" --deadline "$bench_deadline" ${quick_args[@]+"${quick_args[@]}"}

say ""
if ((dry_run)); then
  say "== done (dry run)"
  exit 0
fi
say "== files in $out:"
find "$out" -maxdepth 1 -type f -printf '%10s  %f\n' 2>&1 | sort -k2 | tee -a "$log"
if ((${#failed[@]})); then
  say "== FAILED stages: ${failed[*]}"
  exit 1
fi
say "== all stages passed"
