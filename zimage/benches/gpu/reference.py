"""The GPU benchmark's Python half: random checkpoints and diffusers' timings.

    python3 reference.py make --size turbo --out DIR   # a random Z-Image-Turbo-size transformer
    python3 reference.py caps --dim 2560 --len 128 --out FILE.safetensors
    python3 reference.py time --model DIR --width 1024 --height 1024 --cap-len 128 [--compile]
    python3 reference.py kernels --model DIR [--compile] --out FILE.json

`make` writes a diffusers transformer checkpoint (bfloat16, random weights: timings only).
`time` runs diffusers' ZImageTransformer2DModel forward as ZImagePipeline calls it (latents as
a list of [C, 1, H/8, W/8], one caption of `cap-len` tokens) eagerly or under torch.compile,
and prints one JSON line: ms per forward (median of the timed runs, CUDA events) and the peak
memory torch allocated. `kernels` runs the same forward once under torch.profiler and writes
every CUDA kernel it launched with its count and total time: which GEMM, attention and fused
kernels diffusers runs, to set beside `ncu`'s list for `dit`. Run it where diffusers and
torch with CUDA are installed (the GPU machine: see run.sh).
"""

import argparse
import json
import statistics

import torch
from diffusers import ZImageTransformer2DModel
from safetensors.torch import save_file

SMALL = dict(dim=768, n_layers=8, n_refiner_layers=2, n_heads=12, n_kv_heads=12,
             cap_feat_dim=512, axes_dims=[16, 24, 24])


def make(args):
    torch.manual_seed(0)
    config = {} if args.size == "turbo" else dict(SMALL)
    if args.layers is not None:
        config["n_layers"] = args.layers
    with torch.device("cuda"):
        model = ZImageTransformer2DModel(**config).to(torch.bfloat16)
    # Default init leaves some weights at zero (the final layer): small random values
    # everywhere keep every kernel honest.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.02)
    model.save_pretrained(args.out, max_shard_size="5GB")
    print(json.dumps({"wrote": args.out, "parameters": sum(p.numel() for p in model.parameters())}))


def caps(args):
    torch.manual_seed(1)
    save_file({"cap_feats": torch.randn(args.len, args.dim)}, args.out)


def setup(args):
    """The model (eager or compiled) and one forward's inputs, warmed up."""
    torch.manual_seed(2)
    model = ZImageTransformer2DModel.from_pretrained(args.model, torch_dtype=torch.bfloat16).cuda().eval()
    c = model.config
    h, w = args.height // 8, args.width // 8
    x = [torch.randn(c.in_channels, 1, h, w, device="cuda", dtype=torch.bfloat16)]
    cap = [torch.randn(args.cap_len, c.cap_feat_dim, device="cuda", dtype=torch.bfloat16)]
    t = torch.tensor([0.5], device="cuda")
    compiled = torch.compile(model) if args.compile else model
    run = lambda: compiled(x, t, cap, return_dict=False)
    with torch.no_grad():
        for _ in range(args.warmup):
            run()
    return model, run


def kernels(args):
    from torch.profiler import ProfilerActivity, profile

    _, run = setup(args)
    torch.cuda.synchronize()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    table = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            row = table.setdefault(e.name, [0, 0.0])
            row[0] += 1
            row[1] += e.device_time_total
    rows = sorted(({"kernel": k, "count": n, "us": us} for k, (n, us) in table.items()),
                  key=lambda r: -r["us"])
    with open(args.out, "w") as f:
        json.dump({"compile": args.compile, "total_us": sum(r["us"] for r in rows), "kernels": rows}, f, indent=1)


def time(args):
    model, run = setup(args)
    with torch.no_grad():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    print(json.dumps({
        "impl": "diffusers" + (" + torch.compile" if args.compile else " eager"),
        "model": args.model, "width": args.width, "height": args.height,
        "ms_per_forward": statistics.median(times), "ms_all": times,
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--size", choices=["turbo", "small"], default="turbo")
    m.add_argument("--out", required=True)
    m.add_argument("--layers", type=int, help="main layers (default: the size's own)")
    c = sub.add_parser("caps")
    c.add_argument("--dim", type=int, required=True)
    c.add_argument("--len", type=int, default=128)
    c.add_argument("--out", required=True)
    for name in ["time", "kernels"]:
        t = sub.add_parser(name)
        t.add_argument("--model", required=True)
        t.add_argument("--width", type=int, default=1024)
        t.add_argument("--height", type=int, default=1024)
        t.add_argument("--cap-len", type=int, default=128)
        t.add_argument("--compile", action="store_true")
        t.add_argument("--warmup", type=int, default=3)
        t.add_argument("--runs", type=int, default=10)
        if name == "kernels":
            t.add_argument("--out", required=True)
    args = parser.parse_args()
    {"make": make, "caps": caps, "time": time, "kernels": kernels}[args.command](args)


if __name__ == "__main__":
    main()
