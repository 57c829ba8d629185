#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/ from the repository's fixtures, trimmed to a few kilobytes
per target. Run from anywhere: `python3 fuzz/make_seeds.py` (the JPEG seeds need Pillow:
`pip install --target /tmp/pillow pillow` and PYTHONPATH=/tmp/pillow; without it they are
kept as they are)."""

import io
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def fixture(*parts):
    with open(os.path.join(ROOT, *parts), "rb") as f:
        return f.read()


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def read_st(data):
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    return header, data[8 + n :]


def safetensors(tensors, metadata=None, pad=0):
    """tensors: [(name, dtype, shape, bytes)] -> a safetensors file."""
    header, blobs, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs += data
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text + blobs


def subset(data, keep, metadata=None):
    """The tensors of a safetensors file whose names satisfy `keep`."""
    header, blob = read_st(data)
    tensors = []
    for name, info in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        begin, end = info["data_offsets"]
        tensors.append((name, info["dtype"], info["shape"], blob[begin:end]))
    return safetensors(tensors, metadata if metadata is not None else header.get("__metadata__"))


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


# safetensors: a fixture, and every dtype, metadata, scalars, empty and unaligned tensors.
write("safetensors", "fixture.safetensors", fixture("models/dit/tests/fixtures/model_a_padded.expected.safetensors"))
write(
    "safetensors",
    "dtypes.safetensors",
    safetensors(
        [
            ("bool", "BOOL", [3], b"\x00\x01\x02"),
            ("u8", "U8", [2], b"\x01\x02"),
            ("i8", "I8", [1], b"\xff"),
            ("i16", "I16", [1, 1], b"\x01\x00"),
            ("u16", "U16", [1], b"\x01\x00"),
            ("f16", "F16", [2], b"\x00\x3c\x00\xc0"),
            ("bf16", "BF16", [1], b"\x80\x3f"),
            ("i32", "I32", [1], b"\x07\x00\x00\x00"),
            ("u32", "U32", [1], b"\x07\x00\x00\x00"),
            ("f32", "F32", [2, 1], f32(1.5, -2.0)),
            ("i64", "I64", [1], b"\x01" + b"\x00" * 7),
            ("u64", "U64", [1], b"\x02" + b"\x00" * 7),
            ("f64", "F64", [1], struct.pack("<d", 0.25)),
        ],
        metadata={"format": "pt", "note": "dtypes"},
    ),
)
write("safetensors", "scalar_empty.safetensors", safetensors([("s", "F32", [], f32(3.0)), ("e", "F32", [0, 4], b"")]))
# One byte of padding in the header leaves the f32 data unaligned.
write("safetensors", "unaligned.safetensors", safetensors([("u", "F32", [2], f32(1.0, 2.0))], pad=1))
write("safetensors", "fp8.safetensors", safetensors([("w", "F8_E4M3", [2], b"\x38\x40")]))
write("safetensors", "truncated.safetensors", safetensors([("t", "F32", [4], f32(1, 2, 3, 4))])[:-5])

# checkpoint_index: maps over the target's shards a.safetensors (x, y) and b.safetensors (z).
index = {"metadata": {"total_size": 12}, "weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}
write("checkpoint_index", "good.json", json.dumps(index, indent=2))
write("checkpoint_index", "missing.json", json.dumps({"weight_map": {"x": "a.safetensors", "w": "b.safetensors"}}))
write("checkpoint_index", "path.json", json.dumps({"weight_map": {"x": "../a.safetensors"}}))
fixture_index = json.loads(fixture("models/dit/tests/fixtures/model_a/diffusion_pytorch_model.safetensors.index.json"))
trimmed = dict(list(fixture_index["weight_map"].items())[:6])
write("checkpoint_index", "fixture.json", json.dumps({"metadata": fixture_index.get("metadata", {}), "weight_map": trimmed}, indent=2))

# component_config: the first byte picks the component (0 DiT, 1 Qwen3, 2 VAE, 3 quantization).
for i, path in enumerate(["models/dit/tests/fixtures/model_a/config.json", "zimage/tests/fixtures/pipeline/transformer/config.json"]):
    write("component_config", f"dit{i}.json", b"\x00" + fixture(path))
dit = json.loads(fixture("models/dit/tests/fixtures/model_a/config.json"))
dit["quantization"] = {"mode": "mxfp8", "group_size": 32, "bits": 8}
write("component_config", "dit_quantized.json", b"\x00" + json.dumps(dit, indent=2).encode())
for i, path in enumerate(["models/qwen3/tests/fixtures/qwen3_a/config.json", "models/qwen3/tests/fixtures/qwen3_b/config.json", "zimage/tests/fixtures/pipeline/text_encoder/config.json"]):
    write("component_config", f"qwen3_{i}.json", b"\x01" + fixture(path))
for i, path in enumerate(["models/vae/tests/fixtures/vae/config.json", "zimage/tests/fixtures/pipeline/vae/config.json"]):
    write("component_config", f"vae{i}.json", b"\x02" + fixture(path))
for i, record in enumerate(
    [
        {"mode": "affine4", "group_size": 64, "bits": 4},
        {"group_size": 64, "bits": 8},
        {"mode": "mxfp4", "group_size": 32},
        {"mode": "nvfp4", "group_size": 16, "bits": 4},
    ]
):
    write("component_config", f"quant{i}.json", b"\x03" + json.dumps(record).encode())

# model_index
write("model_index", "pipeline.json", fixture("zimage/tests/fixtures/pipeline/model_index.json"))
write("model_index", "wrong.json", json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}))

# scheduler_config
write("scheduler_config", "pipeline.json", fixture("zimage/tests/fixtures/pipeline/scheduler/scheduler_config.json"))
write(
    "scheduler_config",
    "dynamic.json",
    json.dumps({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096, "time_shift_type": "exponential"}),
)
write("scheduler_config", "unsupported.json", json.dumps({"use_karras_sigmas": True, "shift": 3.0}))

# tokenizer_json: the pipeline's tokenizer and small ones of other models.
write("tokenizer_json", "pipeline.json", fixture("zimage/tests/fixtures/pipeline/tokenizer/tokenizer.json"))
added = [{"id": 3, "content": "<|im_end|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}]
small = {
    "wordlevel.json": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "fox": 2}, "unk_token": "<unk>"},
    "bpe.json": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "vocab": {"<unk>": 0, "f": 1, "o": 2, "x": 3, "fo": 4, "fox": 5}, "merges": ["f o", "fo x"]},
    "wordpiece.json": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "fo": 1, "##x": 2}},
    "unigram.json": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["fox", -1.0], ["f", -2.0], ["o", -2.0], ["x", -2.0]]},
}
for name, model in small.items():
    write(
        "tokenizer_json",
        name,
        json.dumps(
            {
                "version": "1.0",
                "added_tokens": added,
                "normalizer": {"type": "Lowercase"},
                "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<|im_end|>": {"id": "<|im_end|>", "ids": [3], "tokens": ["<|im_end|>"]}}} if name == "wordlevel.json" else None,
                "decoder": {"type": "ByteLevel"} if name == "bpe.json" else None,
                "model": model,
            },
            indent=1,
        ),
    )

# chat_template: tokenizer_config.json, NUL, chat_template.jinja (optional), NUL, prompt.
config = fixture("zimage/tests/fixtures/pipeline/tokenizer/tokenizer_config.json")
jinja = fixture("zimage/tests/fixtures/pipeline/tokenizer/chat_template.jinja")
write("chat_template", "pipeline.bin", config + b"\0" + jinja + b"\0a red fox")
write("chat_template", "builtin.json", fixture("models/qwen3/tokenizer/tokenizer_config.json"))
write(
    "chat_template",
    "list.json",
    json.dumps(
        {
            "eos_token": {"content": "<|im_end|>", "special": True},
            "pad_token": None,
            "chat_template": [
                {"name": "default", "template": "{% for m in messages %}{{ m['role'] }}: {{ m.content | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}"},
                {"name": "tool_use", "template": "{{ tools | tojson }}"},
            ],
        }
    ),
)
write("chat_template", "raise.bin", b'{"bos_token": "<s>"}\0{% if messages[0].role != "user" %}{{ raise_exception("user first") }}{% endif %}{{ bos_token }}{{ messages | length }}{{ "x".upper() }}{% for m in messages[::-1] %}{{ m.content.split(" ")[0] }}{% break %}{% endfor %}\0fox')

# picture: small PNGs of the fixtures and JPEGs made from one.
for name in ["mask.png", "resize_odd_13x48.png", "resize_tall_expected.png", "resize_odd_40x17.png"]:
    write("picture", name, fixture("zimage/tests/fixtures/edit", name))
try:
    from PIL import Image

    picture = Image.open(io.BytesIO(fixture("zimage/tests/fixtures/edit/resize_odd_40x17.png"))).convert("RGB")
    for name, image, options in [
        ("baseline.jpg", picture, {"quality": 40}),
        ("progressive.jpg", picture, {"quality": 40, "progressive": True}),
        ("gray.jpg", picture.convert("L"), {"quality": 40}),
        ("subsampled.jpg", picture.resize((17, 9)), {"quality": 30, "subsampling": 2}),
    ]:
        out = io.BytesIO()
        image.save(out, "JPEG", **options)
        write("picture", name, out.getvalue())
    gray_alpha = io.BytesIO()
    picture.convert("LA").resize((9, 5)).save(gray_alpha, "PNG")
    write("picture", "gray_alpha.png", gray_alpha.getvalue())
except ImportError:
    print("Pillow is missing: the JPEG seeds are left as they are")

# lora: a few layers of each layout of the fixtures, alpha tensors and metadata.
kohya = fixture("zimage/tests/fixtures/edit/lora_kohya.safetensors")
write("lora", "kohya.safetensors", subset(kohya, lambda n: n.startswith("lora_unet_layers_0_attention_to_q") or n.startswith("lora_unet_cap_embedder_1")))
peft = fixture("zimage/tests/fixtures/edit/lora_peft.safetensors")
metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 2.0, "transformer.r": 4, "transformer.use_rslora": True})}
write("lora", "peft.safetensors", subset(peft, lambda n: "layers.1.feed_forward.w1" in n or "all_x_embedder" in n, metadata))
header, blob = read_st(kohya)
down = header["lora_unet_layers_0_attention_to_q.lora_down.weight"]
begin, end = down["data_offsets"]
write(
    "lora",
    "fused_qkv.safetensors",
    safetensors(
        [
            ("diffusion_model.layers.0.attention.qkv.alpha", "F32", [], f32(4.0)),
            ("diffusion_model.layers.0.attention.qkv.lora_down.weight", "F32", down["shape"], blob[begin:end]),
            ("diffusion_model.layers.0.attention.qkv.lora_up.weight", "F32", [96, 4], f32(*([0.01] * 384))),
            ("diffusion_model.layers.0.attention.out.lora_A.weight", "F32", down["shape"], blob[begin:end]),
            ("diffusion_model.layers.0.attention.out.lora_B.weight", "F32", [32, 4], f32(*([0.02] * 128))),
        ]
    ),
)

# request: bodies of dit serve.
for i, body in enumerate(
    [
        {"prompt": "a fox"},
        {"prompt": "a fox", "size": "64x32", "n": 2, "seed": 3, "steps": 4, "guidance_scale": 1.5, "stream": True, "model": "tiny", "response_format": "b64_json", "negative_prompt": "blur", "user": "u1"},
        {"prompt": "a", "size": "1024x64"},
        {"prompt": "a", "response_format": "url", "n": None},
    ]
):
    write("request", f"body{i}.json", json.dumps(body))
