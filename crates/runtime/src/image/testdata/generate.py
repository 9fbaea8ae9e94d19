#!/usr/bin/env python3
"""Regenerates the image-path test data next to this script: inputs and what Pillow (or TensorFlow) makes of them.

Run with the fixtures virtualenv (pillow==13.0.0, numpy), from any directory:
    python crates/runtime/src/image/testdata/generate.py
`tf-bilinear.rgb` additionally needs tensorflow-cpu==2.21.0 (`--tf`); without it that file is left as is.
Every file is small; the tests compare the Rust output with these bytes exactly.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SEED = 20261124
# Target sizes (width, height) for the resize goldens: both axes shrink (horizontal pass first), height shrinks
# much more than width (Pillow 13 runs the vertical pass first), both grow, only the height changes, only the
# width changes.
SIZES = [(11, 7), (25, 5), (41, 23), (29, 31), (7, 17)]
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_source():
    """29x17 RGB: noise over smooth ramps, so that both rounding and overshoot show."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:17, 0:29]
    ramps = np.stack([x * 8, y * 14, (x + y) * 5], axis=-1)
    noise = rng.integers(-40, 41, size=ramps.shape)
    return np.clip(ramps + noise, 0, 255).astype(np.uint8)


def rgb_bytes(image):
    return np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes()


def photo(width, height):
    """A smooth colourful picture with edges (chroma subsampling and IDCT rounding both matter)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)
    g = 255 * x / width
    b = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2, 230, 30)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def cmyk_with_black(rgb):
    """RGB -> CMYK with grey-component replacement, so K carries content (Pillow's own convert leaves K at 0)."""
    a = rgb.astype(np.float64) / 255.0
    k = 1.0 - a.max(axis=2)
    scale = np.where(k < 1.0, 1.0 - k, 1.0)[..., None]
    cmy = (1.0 - a - k[..., None]) / scale
    return Image.fromarray(np.round(np.concatenate([cmy, k[..., None]], axis=2) * 255).astype(np.uint8), "CMYK")


def write_png_16(path, samples, colour_type):
    """Pillow cannot write 16-bit RGB(A) or LA PNGs; write one by hand (filter 0, one IDAT)."""
    import struct
    import zlib

    height, width = samples.shape[:2]
    raw = samples.astype(">u2").reshape(height, -1).tobytes()
    row = len(raw) // height
    body = b"".join(b"\x00" + raw[i * row : (i + 1) * row] for i in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")
    )


def decode_cases():
    """Encoded images and Pillow's `Image.open(...).convert("RGB")` of each (16-bit gray: the high byte)."""
    picture = photo(24, 16)
    Image.fromarray(picture).save(HERE / "yuv420.jpg", quality=90, subsampling="4:2:0")
    Image.fromarray(picture).save(HERE / "yuv422.jpg", quality=90, subsampling="4:2:2")
    Image.fromarray(picture).save(HERE / "progressive.jpg", quality=85, progressive=True)
    Image.fromarray(picture).convert("L").save(HERE / "gray.jpg", quality=90)
    cmyk_with_black(picture).save(HERE / "cmyk.jpg", quality=90)
    Image.fromarray(picture).save(HERE / "rgb.png")
    Image.fromarray(picture).resize((1, 1)).save(HERE / "1x1.png")
    Image.fromarray(picture).resize((1, 1)).save(HERE / "1x1.jpg", quality=95)
    palette = Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(HERE / "palette.png", transparency=3)
    rgba = Image.fromarray(picture).convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(24 * 16).reshape(16, 24) % 256).astype(np.uint8)))
    rgba.save(HERE / "rgba.png")
    Image.fromarray(picture).convert("LA").save(HERE / "la.png")
    Image.fromarray(picture).convert("1").save(HERE / "bilevel.png")
    rng = np.random.default_rng(SEED + 1)
    wide = picture.astype(np.uint16) * 257 + rng.integers(0, 257, size=picture.shape).astype(np.uint16)
    write_png_16(HERE / "rgb16.png", wide, 2)
    alpha = np.full(picture.shape[:2] + (1,), 40000, dtype=np.uint16)
    write_png_16(HERE / "rgba16.png", np.concatenate([wide, alpha], axis=2), 6)
    write_png_16(HERE / "gray16.png", wide[..., 1], 0)
    for name in (
        "yuv420.jpg", "yuv422.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg", "rgb.png", "1x1.png", "1x1.jpg",
        "palette.png", "rgba.png", "la.png", "bilevel.png", "rgb16.png", "rgba16.png",
    ):
        with Image.open(HERE / name) as image:
            (HERE / f"{name}.rgb").write_bytes(rgb_bytes(image))
    high = (wide[..., 1] >> 8).astype(np.uint8)
    (HERE / "gray16.png.rgb").write_bytes(np.repeat(high[..., None], 3, axis=2).tobytes())


def resize_cases(with_tf):
    source = resize_source()
    Image.fromarray(source).save(HERE / "resize-source.png")
    for name, resample in FILTERS.items():
        outputs = [rgb_bytes(Image.fromarray(source).resize(size, resample)) for size in SIZES]
        (HERE / f"pil-{name}.rgb").write_bytes(b"".join(outputs))
    if with_tf:
        import tensorflow as tf

        outputs = []
        for width, height in SIZES:
            resized = tf.image.resize(source[None], (height, width), method="bilinear", antialias=False)
            # The graph takes u8: round half up, which is what the runtime does for non-negative values.
            outputs.append(np.clip(np.floor(resized.numpy()[0] + 0.5), 0, 255).astype(np.uint8).tobytes())
        (HERE / "tf-bilinear.rgb").write_bytes(b"".join(outputs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf", action="store_true", help="also regenerate tf-bilinear.rgb (needs tensorflow)")
    args = parser.parse_args()
    decode_cases()
    resize_cases(args.tf)


if __name__ == "__main__":
    main()
