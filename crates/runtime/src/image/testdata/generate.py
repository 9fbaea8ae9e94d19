#!/usr/bin/env python3
"""Regenerates the image-path test data next to this script: inputs and what Pillow (or TensorFlow) makes of them.

Run with the fixtures virtualenv (pillow==13.0.0, numpy, transformers==5.23.0), from any directory:
    python crates/runtime/src/image/testdata/generate.py
`tf-bilinear.rgb` additionally needs tensorflow-cpu==2.21.0 (`--tf`); without it that file is left as is.
Decoder inputs in every other format and colour type, with EXIF orientations, go to `formats/` (see `formats.py`).
Every file is small; the tests compare the Rust output with these bytes exactly.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import formats

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
    """Encoded images and Pillow's `Image.open(...).convert("RGB")` of each (16-bit gray: clipped to 255)."""
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
        "palette.png", "rgba.png", "la.png", "bilevel.png", "rgb16.png", "rgba16.png", "gray16.png",
    ):
        with Image.open(HERE / name) as image:
            (HERE / f"{name}.rgb").write_bytes(rgb_bytes(image))
    formats.write(HERE / "formats")


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


def geometry_cases():
    """`geometry.json` and `pipelines.rgb`: what transformers 5.23's PIL-backend image processors compute.

    `sizes`: the (height, width) `PilBackend.resize` resizes an image to for a `shortest_edge` size (with and
    without `longest_edge`), taken from `resize` itself with the Pillow call stubbed out. `crops`:
    `image_transforms.center_crop` of small CHW images whose samples are all distinct and non-zero, so that
    the zero padding and every offset show. `pipelines`: whole processors (rescale and normalize off, so the
    output is the `u8` image the graph receives) run on `resize-source.png`, with the kiln `preprocess`
    object that describes each; their outputs (HWC) are concatenated in `pipelines.rgb`.
    """
    import json

    from transformers import image_processing_backends
    from transformers.image_transforms import center_crop
    from transformers.image_utils import SizeDict
    from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    def resized_size(height, width, size):
        stub = image_processing_backends.np_resize
        image_processing_backends.np_resize = lambda image, size, **kwargs: size
        try:
            image = np.empty((3, height, width), dtype=np.uint8)
            return list(ViTImageProcessorPil().resize(image, SizeDict(**size)))
        finally:
            image_processing_backends.np_resize = stub

    sizes = []
    for height, width, size in [
        (17, 29, {"shortest_edge": 11}),
        (29, 17, {"shortest_edge": 11}),
        (480, 640, {"shortest_edge": 224}),
        (640, 480, {"shortest_edge": 224}),
        (333, 500, {"shortest_edge": 256}),
        (7, 3, {"shortest_edge": 5}),
        (100, 100, {"shortest_edge": 224}),
        (224, 300, {"shortest_edge": 224}),
        (300, 224, {"shortest_edge": 224}),
        (224, 224, {"shortest_edge": 224}),
        (1, 1000, {"shortest_edge": 224}),
        (480, 640, {"shortest_edge": 224, "longest_edge": 300}),
        (200, 640, {"shortest_edge": 224, "longest_edge": 300}),
        (640, 200, {"shortest_edge": 224, "longest_edge": 300}),
        (100, 177, {"shortest_edge": 224, "longest_edge": 300}),
        (177, 100, {"shortest_edge": 224, "longest_edge": 300}),
        (1, 41, {"shortest_edge": 256, "longest_edge": 333}),
        (75, 300, {"shortest_edge": 224, "longest_edge": 300}),
        (300, 224, {"shortest_edge": 224, "longest_edge": 1333}),
        (1, 40, {"shortest_edge": 224, "longest_edge": 300}),
        (1, 120, {"shortest_edge": 224, "longest_edge": 300}),
        (1, 1000, {"shortest_edge": 224, "longest_edge": 300}),
    ]:
        sizes.append({"image": [height, width], "size": size, "resized": resized_size(height, width, size)})

    crops = []
    for (height, width), (crop_height, crop_width) in [
        ((6, 8), (4, 4)),
        ((7, 9), (4, 4)),
        ((5, 5), (5, 5)),
        ((6, 8), (3, 5)),
        ((3, 8), (6, 4)),
        ((8, 3), (4, 6)),
        ((4, 4), (6, 6)),
        ((2, 3), (5, 6)),
        ((1, 1), (2, 3)),
    ]:
        image = (1 + np.arange(3 * height * width, dtype=np.uint8)).reshape(3, height, width)
        cropped = center_crop(image, (crop_height, crop_width), input_data_format="channels_first")
        crops.append(
            {
                "image": [height, width],
                "crop": [crop_height, crop_width],
                "pixels": cropped.transpose(1, 2, 0).reshape(-1).tolist(),
            }
        )

    resample_names = {int(value): name for name, value in FILTERS.items()}
    pipelines, outputs = [], []
    source = Image.open(HERE / "resize-source.png").convert("RGB")
    for processor, kwargs in [
        (ViTImageProcessorPil, {"size": {"shortest_edge": 11}, "crop_size": {"height": 9, "width": 7}, "resample": 3}),
        (ViTImageProcessorPil, {"size": {"shortest_edge": 17}, "crop_size": {"height": 15, "width": 15}, "resample": 2}),
        (ViTImageProcessorPil, {"size": {"shortest_edge": 23}, "crop_size": {"height": 21, "width": 31}, "resample": 0}),
        (ViTImageProcessorPil, {"size": {"shortest_edge": 11}, "crop_size": {"height": 13, "width": 21}, "resample": 2}),
        (
            ViTImageProcessorPil,
            {"size": {"shortest_edge": 13, "longest_edge": 20}, "crop_size": {"height": 10, "width": 16}, "resample": 1},
        ),
        (ViTImageProcessorPil, {"size": {"height": 20, "width": 15}, "crop_size": {"height": 16, "width": 12}, "resample": 1}),
        (ViTImageProcessorPil, {"size": {"height": 5, "width": 25}, "crop_size": {"height": 4, "width": 21}, "resample": 2}),
        (MobileViTImageProcessorPil, {"size": {"shortest_edge": 11}, "crop_size": {"height": 14, "width": 14}, "resample": 2}),
    ]:
        kwargs = {**kwargs, "do_center_crop": True, "do_rescale": False, "do_normalize": False}
        pixels = processor(**kwargs)(source)["pixel_values"][0]
        assert pixels.dtype == np.uint8, pixels.dtype
        outputs.append(pixels.transpose(1, 2, 0).tobytes())
        bgr = kwargs.get("do_flip_channel_order", processor is MobileViTImageProcessorPil)
        pipelines.append(
            {
                "processor": processor.__name__,
                "kwargs": kwargs,
                "height": pixels.shape[1],
                "width": pixels.shape[2],
                "preprocess": {
                    "processor": processor.__name__.removesuffix("Pil"),
                    "decoder": "pillow",
                    "exif_orientation": False,
                    "resize": "pil",
                    "resample": resample_names[kwargs["resample"]],
                    "size": kwargs["size"],
                    "crop": kwargs["crop_size"],
                    "channel_order": "bgr" if bgr else "rgb",
                    "transparency_to_white": False,
                    "scale": [1.0, 1.0, 1.0],
                    "offset": [0.0, 0.0, 0.0],
                },
            }
        )
    (HERE / "pipelines.rgb").write_bytes(b"".join(outputs))
    # One case per line, so a regenerated file diffs case by case.
    sections = ",\n".join(
        f' "{name}": [\n' + ",\n".join(f"  {json.dumps(case)}" for case in cases) + "\n ]"
        for name, cases in [("sizes", sizes), ("crops", crops), ("pipelines", pipelines)]
    )
    (HERE / "geometry.json").write_text("{\n" + sections + "\n}\n")


def draft_cases():
    """JPEGs decoded as Pillow's `draft("RGB", size)` does (libjpeg's scaled IDCT), at each reduction.

    `draft.jpg` at requests picking 2, 4, 8 and 1; the small decode cases at one reduction each;
    `draft-orient-6.jpg` (EXIF orientation 6) through the whole draft decoder: drafted with the 6x30
    resize's size in the stored orientation (30x6: reduction 2, where 6x30 would give 1), transposed,
    resized bilinearly.
    """
    picture = Image.fromarray(photo(67, 45))
    picture.save(HERE / "draft.jpg", quality=90, subsampling="4:2:0")
    cases = [("draft.jpg", size) for size in [(33, 22), (16, 11), (8, 5), (67, 45)]]
    cases += [("cmyk.jpg", (12, 8)), ("gray.jpg", (6, 4)), ("progressive.jpg", (3, 2)), ("yuv422.jpg", (12, 8))]
    for name, (width, height) in cases:
        image = Image.open(HERE / name)
        image.draft("RGB", (width, height))
        (HERE / f"{name}.draft-{width}x{height}.rgb").write_bytes(rgb_bytes(image))
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.save(HERE / "draft-orient-6.jpg", quality=90, subsampling="4:2:0", exif=exif.tobytes())
    image = Image.open(HERE / "draft-orient-6.jpg")
    image.draft("RGB", (30, 6))
    oriented = ImageOps.exif_transpose(image).convert("RGB")
    assert oriented.size == (23, 34), oriented.size
    resized = oriented.resize((6, 30), Image.Resampling.BILINEAR)
    (HERE / "draft-orient-6.jpg.6x30.rgb").write_bytes(rgb_bytes(resized))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf", action="store_true", help="also regenerate tf-bilinear.rgb (needs tensorflow)")
    args = parser.parse_args()
    decode_cases()
    resize_cases(args.tf)
    geometry_cases()
    draft_cases()


if __name__ == "__main__":
    main()
