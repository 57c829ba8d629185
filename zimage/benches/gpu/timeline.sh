#!/usr/bin/env bash
# A GPU timeline of one command, for machines without Nsight Systems: builds timeline.c (a
# CUPTI injection library) with the machine's CUPTI, runs the command under it, and prints
# timeline.py's summary of the last denoising step.
#
#   bash zimage/benches/gpu/timeline.sh OUT.csv -- $BIN/dit generate --steps 4 ...
#
# CUPTI defaults to the nvidia-cuda-cupti wheel next to PyTorch (CUPTI=DIR overrides: a
# folder with include/ and lib/).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
shift
[ "${1:-}" = "--" ] && shift
cupti=${CUPTI:-$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')}
lib=$(mktemp -d)/libtimeline.so
gcc -O2 -shared -fPIC -I"$cupti/include" -I"${CUDA_HOME:-/usr/local/cuda}/include" \
    "$here/timeline.c" -L"$cupti/lib" -l:libcupti.so.13 -o "$lib"
CUDA_INJECTION64_PATH=$lib TIMELINE_OUT=$out \
    LD_LIBRARY_PATH="$cupti/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
python3 "$here/timeline.py" "$out"
