"""mlx-lm's side of bench_generate.rs: greedy generation with mlx_lm.generate.generate_step.

    python bench_generate_mlx_lm.py MODEL_DIR PROMPT_IDS_JSON

Loads the checkpoint with mlx_lm.utils.load_model (its Qwen3 class, its weights as stored),
casts it to float32 as the Rust side computes, warms up with a short run and prints one JSON
line with the versions. Then, for each line NEW_TOKENS read from stdin, times one greedy run
of that many tokens after the prompt and prints one JSON line: the prefill time (from the
call to the first token), the decode time (first token to last) and the tokens. The Rust
side alternates these runs with its own, so that both see the same machine load.
"""

import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model


def greedy(logprobs):
    return mx.argmax(logprobs, axis=-1)


def run(model, prompt, new_tokens):
    start = time.perf_counter()
    times, tokens = [], []
    for token, _ in generate_step(mx.array(prompt), model, max_tokens=new_tokens, sampler=greedy):
        times.append(time.perf_counter())
        tokens.append(int(token))
    return {
        "prefill_s": times[0] - start,
        "decode_s": times[-1] - times[0],
        "tokens": tokens,
    }


def main():
    model_dir, prompt_json = sys.argv[1:3]
    prompt = json.loads(prompt_json)
    model, _ = load_model(Path(model_dir))
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    run(model, prompt, 8)  # warm-up
    print(json.dumps({"mlx_lm": mlx_lm.__version__, "mlx": mx.__version__}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(model, prompt, int(line))), flush=True)


if __name__ == "__main__":
    main()
