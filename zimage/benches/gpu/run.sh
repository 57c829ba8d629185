#!/usr/bin/env bash
# The GPU benchmark: `dit generate` compiled and eager against diffusers eager and under
# torch.compile, on the same random checkpoints, side by side in one run, with peak memory.
#
# On the GPU machine, with `dit` built against MLX's CUDA wheel (../shared/gpu/README.md:
# pack.sh, then the two commands), from the repository root:
#
#   source .gpu/p2/setup.sh && bash zimage/benches/gpu/run.sh [turbo|small|all] [STEPS]
#
# turbo: the Z-Image-Turbo transformer (dim 3840, 30 layers) at 1024x1024; small: the
# built-in small size at 512x512; both with a 128-token caption, bfloat16. MODES picks dit's
# runs (default: MODES="compiled eager mxfp8 affine8 fp8"; the last three quantize at load). Results go to
# $OUT (or /tmp/zbench/out) as JSON, and a table is printed last (with each dit run's load
# time and first step's: on a fresh machine the first run's step compiles MLX's kernels).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
which=${1:-all}
steps=${2:-6}
work=/tmp/zbench
out=${OUT:-$work/out}
mkdir -p "$work" "$out"

bench() { # size width cap_dim
    local size=$1 width=$2 dim=$3 model=$work/$1
    [ -f "$model/config.json" ] || python3 "$here/reference.py" make --size "$size" --out "$model"
    python3 "$here/reference.py" caps --dim "$dim" --len 128 --out "$work/$size-caps.safetensors"
    for mode in ${MODES:-compiled eager mxfp8 affine8 fp8}; do
        local flag=""
        case $mode in eager) flag=--no-compile ;; mxfp8|affine8|fp8) flag="--quantize $mode" ;; esac
        "$BIN/dit" generate --model "$model" --cap-feats "$work/$size-caps.safetensors" \
            --width "$width" --height "$width" --steps "$steps" --json $flag \
            | tail -n 1 > "$out/dit-$size-$mode.json"
    done
    python3 "$here/reference.py" time --model "$model" --width "$width" --height "$width" \
        > "$out/diffusers-$size-eager.json"
    python3 "$here/reference.py" time --model "$model" --width "$width" --height "$width" \
        --compile > "$out/diffusers-$size-compile.json"
}

case $which in
    turbo) bench turbo 1024 2560 ;;
    small) bench small 512 512 ;;
    all) bench small 512 512; bench turbo 1024 2560 ;;
esac

python3 - "$out" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
gib = 2**30
# first step s: the first step, which traces the graph and, on a fresh machine, compiles
# MLX's kernels (runs after the first find most of them in the cache).
print(f"{'size':6} {'implementation':28} {'ms/step':>8} {'peak GiB':>9} {'weights GiB':>11} {'load s':>7} {'first step s':>12}")
for size in ["small", "turbo"]:
    rows = []
    for mode in ["compiled", "eager", "mxfp8", "affine8", "fp8"]:
        f = out / f"dit-{size}-{mode}.json"
        if f.exists() and f.stat().st_size:
            r = json.loads(f.read_text())
            ms = statistics.mean(r["step_ms"][1:]) if len(r["step_ms"]) > 1 else r["step_ms"][0]
            peak = max(r["denoise_peak_bytes"], r["load_peak_bytes"])
            name = f"dit {mode}" + (f" ({r['quantization']['matmul']})" if "8" in mode else "")
            rows.append((name, ms, peak, r["transformer_bytes"], r["load_ms"] / 1e3,
                         r["step_ms"][0] / 1e3))
    for mode in ["eager", "compile"]:
        f = out / f"diffusers-{size}-{mode}.json"
        if f.exists():
            r = json.loads(f.read_text())
            rows.append((r["impl"], r["ms_per_forward"], r["peak_bytes"], r["weights_bytes"], None,
                         None))
    for name, ms, peak, weights, load, first in rows:
        load = f"{load:7.1f}" if load is not None else ""
        first = f"{first:12.2f}" if first is not None else ""
        print(f"{size:6} {name:28} {ms:8.1f} {peak / gib:9.2f} {weights / gib:11.2f} {load:7} {first}")
PY
