#!/usr/bin/env bash
# One command for a fresh GPU machine: build the package, run every CUDA test and every
# GPU benchmark row, and write benchmarks/results/<device>.md (date, commit, command,
# test summary, benchmark table). Ten minutes at most on an H200.
#
#   bash benchmarks/gpu_suite.sh                # from the repository root
#
# The machine needs torch, triton, CUDA, cmake, pybind11 and scikit-build-core; other
# pure-Python wheels (hydra-core, omegaconf, gymnasium, ...) come from ./.whl, which
# ../shared/device/wheels.sh prepares on a machine with network (carry ".whl"). No network
# is used here; envpool is not needed (the GPU rows use synthetic batches).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
export PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu_suite.log
: > "$log"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$log" 2>&1 || { echo "installing .whl failed (see $log)"; exit 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . >>"$log" 2>&1 \
  || { echo "build failed (see $log)"; tail -30 "$log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

device=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
if [ -z "$device" ]; then echo "no CUDA device: nothing to measure"; exit 2; fi
slug=$(echo "$device" | tr '[:upper:] ' '[:lower:]-' | tr -cd 'a-z0-9-')
result=benchmarks/results/$slug.md
json=${OUT:-/tmp}/gpu_bench.json

# 1. every CUDA test (tests marked gpu by tests/conftest.py), Triton compiled for real
timeout 270 python3 -m pytest tests -m gpu -q -p no:cacheprovider -o addopts="" 2>&1 | tee -a "$log" | tail -15
tests_summary=$(grep -E "passed|failed|error" "$log" | tail -1)

# 2. every GPU benchmark row, short rounds
timeout 270 python3 -m pytest benchmarks -m gpu -q -p no:cacheprovider -o addopts="" --benchmark-only \
  --benchmark-max-time=0.2 --benchmark-min-rounds=3 --benchmark-warmup=on --benchmark-warmup-iterations=2 \
  --benchmark-json="$json" 2>&1 | tee -a "$log" | tail -8

python3 - "$json" "$result" "$device" "$tests_summary" "$(( $(date +%s) - start ))" <<'PY'
import datetime, json, subprocess, sys
from pathlib import Path

json_path, result, device, tests_summary, seconds = sys.argv[1:6]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rows = []
if Path(json_path).is_file():
    for bench in json.loads(Path(json_path).read_text())["benchmarks"]:
        extra = {k: v for k, v in bench.get("extra_info", {}).items()
                 if isinstance(v, (int, float)) and any(w in k for w in ("speedup", "ratio", "per_s", "peak_mib", "latency"))}
        info = ", ".join(f"{k} {v:.3g}" for k, v in sorted(extra.items()))
        rows.append(f"| `{bench['fullname'].split('::', 1)[1]}` | {bench['stats']['mean'] * 1e3:.3f} | {info} |")
lines = [f"# {device}", "",
         f"- date: {datetime.date.today().isoformat()}, commit {commit or 'unknown'}",
         "- command: `bash benchmarks/gpu_suite.sh` (build, `pytest tests -m gpu`, `pytest benchmarks -m gpu "
         "--benchmark-only`)", f"- CUDA tests: {tests_summary or 'no summary'}", f"- wall time: {seconds} s", "",
         "| row | mean (ms) | ratios and rates (extra_info) |", "| --- | ---: | --- |", *rows, ""]
Path(result).write_text("\n".join(lines))
print(f"wrote {result} ({len(rows)} rows)")
PY
if [ -n "${OUT:-}" ]; then cp "$result" "$OUT/"; fi
echo "total $(( $(date +%s) - start )) s"
