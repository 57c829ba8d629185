#!/usr/bin/env bash
# The quantization figures of the README: for each mode, the bytes of the built-in `small`
# pipeline's quantized weights against bfloat16, the decoded picture's error against the
# float32 pipeline (PSNR and max abs over 8-bit pixels), and the time per step.
#
#   zimage/benches/quantization/figures.sh [DIT] [WORKDIR]
#
# DIT defaults to target/release/dit; PYTHON (with numpy and Pillow) to python3.
set -euo pipefail
dit=${1:-target/release/dit}
work=${2:-$(mktemp -d)}
python=${PYTHON:-python3}
here=$(dirname "$0")

"$dit" init --model small --out "$work/f32" >/dev/null
"$dit" init --model small --out "$work/bf16" --dtype bf16 >/dev/null
generate() {
    local tag=$1
    shift
    "$dit" generate --model "$work/f32" --prompt "a red fox crossing a frozen lake at dawn" \
        --steps 4 --width 512 --height 512 --seed 7 --json --out "$work/$tag.png" "$@" \
        >"$work/$tag.json"
}
generate f32
for spec in affine8:32 mxfp8:32 affine4:64 affine4:32 mxfp4:32 nvfp4:16; do
    mode=${spec%:*}
    group=${spec#*:}
    tag=$mode-g$group
    "$dit" quantize --model "$work/bf16" --out "$work/bf16-$tag" --mode "$mode" \
        --group-size "$group" >/dev/null
    generate "$tag" --quantize "$mode" --group-size "$group"
done
"$python" "$here/compare.py" "$work"
