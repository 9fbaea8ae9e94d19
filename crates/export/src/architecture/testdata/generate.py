#!/usr/bin/env python3
"""Regenerates the JSON files next to this script: what PyTorch and transformers compute from small tables
that kiln computes at export time instead.

Run with the fixtures virtualenv (torch and transformers as pinned in fixtures/requirements.txt):
    python crates/export/src/architecture/testdata/generate.py
- resample.json: F.interpolate (bicubic, bilinear) of the channels-last table `table(len)` below, laid out as
  position embeddings are (`[1, rows, cols, C].permute(0, 3, 1, 2)`).
- beit_relative_position_bias.json: BeitRelativePositionBias's `[heads, T, T]` bias from the table
  `table(len)` for patch grids the checkpoint was and was not made for.
Every input is exact in f32 and computed the same way by the Rust tests, which compare outputs bit for bit.
"""

import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# (mode, channels, (rows, cols) from, (rows, cols) to): shrinking, growing, one side only, non-square, and
# bilinear channel counts below, at and past the 8-channel SIMD width (vector lanes and scalar tail).
CASES = [
    ("bicubic", 3, (7, 7), (4, 5)),
    ("bicubic", 5, (7, 7), (9, 11)),
    ("bicubic", 2, (3, 4), (16, 2)),
    ("bicubic", 4, (6, 6), (6, 9)),
    ("bilinear", 3, (7, 7), (11, 13)),
    ("bilinear", 12, (5, 5), (9, 3)),
    ("bilinear", 16, (5, 5), (7, 6)),
    ("bilinear", 10, (5, 5), (5, 7)),
]


# (heads, checkpoint patches per side, input patch grid (rows, cols)): the checkpoint's own grid, a
# non-square one (rows shrink, columns grow), a larger one; 3 heads (scalar loop) and 10 (SIMD and scalar).
BEIT_CASES = [
    (3, 4, (4, 4)),
    (3, 4, (3, 5)),
    (10, 2, (4, 3)),
]


def table(length):
    """Values exact in f32: multiples of 1/64 in [-2, 2)."""
    return [((i * 37) % 256) / 64.0 - 2.0 for i in range(length)]


def write(name, version, cases):
    lines = ",\n  ".join(json.dumps(case) for case in cases)
    (HERE / name).write_text(f'{{"version": "{version}", "cases": [\n  {lines}\n]}}\n')


def resample():
    cases = []
    for mode, channels, (rows, cols), (out_rows, out_cols) in CASES:
        x = torch.tensor(table(rows * cols * channels), dtype=torch.float32)
        x = x.reshape(1, rows, cols, channels).permute(0, 3, 1, 2)
        y = torch.nn.functional.interpolate(x, size=(out_rows, out_cols), mode=mode, align_corners=False)
        cases.append({
            "mode": mode,
            "channels": channels,
            "from": [rows, cols],
            "to": [out_rows, out_cols],
            "output": y[0].permute(1, 2, 0).reshape(-1).tolist(),
        })
    write("resample.json", f"torch {torch.__version__}", cases)


def beit_relative_position_bias():
    from transformers import BeitConfig, __version__
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    cases = []
    for heads, side, (rows, cols) in BEIT_CASES:
        config = BeitConfig(image_size=side * 8, patch_size=8, num_attention_heads=heads)
        module = BeitRelativePositionBias(config)
        span = 2 * side - 1
        values = torch.tensor(table((span * span + 3) * heads), dtype=torch.float32).reshape(-1, heads)
        with torch.no_grad():
            module.relative_position_bias_table.copy_(values)
            bias = module((rows, cols))
        cases.append({"heads": heads, "side": side, "grid": [rows, cols], "bias": bias.reshape(-1).tolist()})
    write("beit_relative_position_bias.json", f"torch {torch.__version__}, transformers {__version__}", cases)


if __name__ == "__main__":
    resample()
    beit_relative_position_bias()
