"""Tabulates what figures.sh wrote in WORKDIR: bytes, picture error, time per step."""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def weights_bytes(pipeline: Path, component: str) -> int:
    return sum(f.stat().st_size for f in (pipeline / component).glob("*.safetensors"))


def step_ms(work: Path, tag: str) -> float:
    report = json.loads((work / f"{tag}.json").read_text().strip().splitlines()[-1])
    return float(np.median(report["step_ms"]))


def main(work: Path) -> None:
    dense = {c: weights_bytes(work / "bf16", c) for c in ("transformer", "text_encoder")}
    reference = np.asarray(Image.open(work / "f32.png"), dtype=np.float64)
    print(f"bfloat16: transformer {dense['transformer']} B, text encoder "
          f"{dense['text_encoder']} B, vae {weights_bytes(work / 'bf16', 'vae')} B; "
          f"float32 {step_ms(work, 'f32'):.0f} ms/step")
    print("| mode | group | transformer | text encoder | both vs bf16 | PSNR (dB) | max abs | ms/step |")
    print("|---|---|---|---|---|---|---|---|")
    for pipeline in sorted(work.glob("bf16-*")):
        tag = pipeline.name.removeprefix("bf16-")
        mode, group = tag.rsplit("-g", 1)
        sizes = {c: weights_bytes(pipeline, c) for c in dense}
        ratio = sum(sizes.values()) / sum(dense.values())
        picture = np.asarray(Image.open(work / f"{tag}.png"), dtype=np.float64)
        diff = picture - reference
        mse = float(np.mean(diff**2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        print(f"| {mode} | {group} | {sizes['transformer'] / dense['transformer']:.3f}x "
              f"| {sizes['text_encoder'] / dense['text_encoder']:.3f}x | {ratio:.3f}x "
              f"| {psnr:.1f} | {np.abs(diff).max():.0f} | {step_ms(work, tag):.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
