"""Decoder test data beyond JPEG and 8-bit PNG: GIF, WebP, BMP, TIFF, PNG of every colour type, EXIF orientation.

Imported by `generate.py`, which says how to run it. Each input `NAME` gets `NAME.rgb`: the bytes of Pillow's
`Image.open(NAME).convert("RGB")` (for the `orient-*` inputs, `ImageOps.exif_transpose` first, as transformers'
`load_image` does). Inputs Pillow cannot write (BMP and TIFF variants, GIF canvases, odd PNGs) are written by
the small writers below, byte by byte; everything is seeded and deterministic.
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

SEED = 20261125


def picture(width, height):
    """A smooth colourful picture with edges (the same recipe as `generate.photo`)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)
    g = 255 * x / width
    b = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2, 230, 30)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------- PNG


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(rows, width, height, depth, colour_type, before_idat=(), after_idat=()):
    """A PNG from packed rows (bytes each, filter 0 added here), with extra chunks around the image data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    body = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + b"".join(png_chunk(kind, data) for kind, data in before_idat)
        + png_chunk(b"IDAT", zlib.compress(body))
        + b"".join(png_chunk(kind, data) for kind, data in after_idat)
        + png_chunk(b"IEND", b"")
    )


def packed_rows(values, bits):
    """Rows of `bits`-bit samples (2-D array), packed MSB first, each row padded to a whole byte."""
    rows = []
    for row in values:
        number, count = 0, 0
        for value in row:
            number = (number << bits) | int(value)
            count += bits
        padding = (-count) % 8
        rows.append((number << padding).to_bytes((count + padding) // 8, "big"))
    return rows


def png_cases(rng):
    width, height = 13, 9
    levels = rng.integers(0, 256, size=(height, width))
    palette = rng.integers(0, 256, size=(16, 3)).astype(np.uint8)
    wide = rng.integers(0, 65536, size=(height, width, 4)).astype(">u2")
    dark = rng.integers(0, 600, size=(height, width)).astype(">u2")
    yield "gray2.png", png(packed_rows(levels >> 6, 2), width, height, 2, 0)
    yield "gray4.png", png(packed_rows(levels >> 4, 4), width, height, 4, 0)
    yield "gray-trns.png", png(packed_rows(levels, 8), width, height, 8, 0, [(b"tRNS", struct.pack(">H", 77))])
    # Values around 255, where Pillow's `I;16` -> `RGB` starts clipping.
    yield "gray16-dark.png", png([row.tobytes() for row in dark], width, height, 16, 0)
    trns = [(b"tRNS", struct.pack(">H", int(dark[0, 0])))]
    yield "gray16-trns.png", png([row.tobytes() for row in dark], width, height, 16, 0, trns)
    yield "la16.png", png([row.tobytes() for row in wide[..., :2]], width, height, 16, 4)
    yield "rgb16-trns.png", png(
        [row.tobytes() for row in wide[..., :3]], width, height, 16, 2, [(b"tRNS", wide[0, 0, :3].tobytes())]
    )
    yield "rgb-trns.png", png(
        [row.tobytes() for row in (wide[..., :3] >> 8).astype(np.uint8)], width, height, 8, 2,
        [(b"tRNS", struct.pack(">HHH", *(int(v) >> 8 for v in wide[0, 0, :3])))],
    )
    indices = levels >> 4
    yield "palette4.png", png(packed_rows(indices, 4), width, height, 4, 3, [(b"PLTE", palette.tobytes())])
    yield "palette1.png", png(packed_rows(indices & 1, 1), width, height, 1, 3, [(b"PLTE", palette[:2].tobytes())])
    # Indices past the end of a 5-entry palette: Pillow paints them black.
    yield "palette-short.png", png(
        packed_rows(indices, 8), width, height, 8, 3,
        [(b"PLTE", palette[:5].tobytes()), (b"tRNS", bytes([0, 128]))],
    )


# ---------------------------------------------------------------------------------------------------- GIF


def lzw(indices, min_code_size):
    """GIF LZW data for `indices` without compression: a clear code before every index keeps the width."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    codes = [code for index in indices for code in (clear, int(index))] + [end]
    size, bits, count, out = min_code_size + 1, 0, 0, bytearray()
    for code in codes:
        bits |= code << count
        count += size
        while count >= 8:
            out.append(bits & 255)
            bits >>= 8
            count -= 8
    if count:
        out.append(bits & 255)
    return bytes(out)


def gif(screen, frame, indices, *, global_palette=None, local_palette=None, transparency=None, min_code_size=8):
    """A one-frame GIF89a: `screen` (w, h), `frame` (left, top, w, h), row-major indices."""

    def table_flags(palette):
        return 0x80 | (len(palette) // 3).bit_length() - 2

    out = b"GIF89a" + struct.pack("<HH", *screen)
    out += bytes([table_flags(global_palette) if global_palette else 0, 0, 0]) + (global_palette or b"")
    if transparency is not None:
        out += b"\x21\xf9\x04" + bytes([1, 0, 0, transparency, 0])
    out += b"," + struct.pack("<HHHH", *frame) + bytes([table_flags(local_palette) if local_palette else 0])
    out += (local_palette or b"") + bytes([min_code_size])
    data = lzw(indices, min_code_size)
    for start in range(0, len(data), 255):
        block = data[start : start + 255]
        out += bytes([len(block)]) + block
    return out + b"\x00;"


def gif_cases(rng):
    photo = picture(24, 16)
    quantized = Image.fromarray(photo).quantize(colors=32, dither=Image.Dither.NONE)
    # Pillow interlaces GIFs at least 16 pixels on each side.
    yield "palette.gif", encoded(quantized, "GIF")
    frames = [quantized, Image.fromarray(photo[::-1]).quantize(colors=32, dither=Image.Dither.NONE)]
    yield "animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    palette = rng.integers(0, 256, size=(16, 3)).astype(np.uint8).tobytes()
    indices = rng.integers(0, 16, size=9 * 5)
    # Frame smaller than the screen: the rest is index 0, or the transparency index when there is one.
    yield "offset.gif", gif((13, 9), (3, 2, 9, 5), indices, global_palette=palette, min_code_size=4)
    yield "offset-transparent.gif", gif(
        (13, 9), (3, 2, 9, 5), indices, global_palette=palette, transparency=5, min_code_size=4
    )
    # Frame reaching past the screen: Pillow enlarges the canvas.
    yield "past-screen.gif", gif((6, 4), (2, 1, 9, 5), indices, global_palette=palette, min_code_size=4)
    yield "local-palette.gif", gif((9, 5), (0, 0, 9, 5), indices, local_palette=palette, min_code_size=4)
    # 4-entry palette, indices up to 15: black past the palette; the identity grey ramp is mode `L` in Pillow,
    # where index 9 is grey level 9.
    yield "short-palette.gif", gif((9, 5), (0, 0, 9, 5), indices, global_palette=palette[:12], min_code_size=4)
    ramp = bytes(i for i in range(4) for _ in range(3))
    yield "gray-ramp.gif", gif((9, 5), (0, 0, 9, 5), indices, global_palette=ramp, min_code_size=4)


# ---------------------------------------------------------------------------------------------------- WebP


def webp_cases(rng):
    photo = picture(24, 16)
    alpha = Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 5 % 256).astype(np.uint8))
    rgba = Image.fromarray(photo).convert("RGBA")
    rgba.putalpha(alpha)
    yield "lossy.webp", encoded(Image.fromarray(photo), "WEBP", quality=90)
    yield "lossy-alpha.webp", encoded(rgba, "WEBP", quality=90)
    yield "lossless.webp", encoded(Image.fromarray(photo), "WEBP", lossless=True)
    yield "lossless-alpha.webp", encoded(rgba, "WEBP", lossless=True, exact=True)
    frames = [Image.fromarray(photo), Image.fromarray(photo[::-1])]
    yield "animated.webp", encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    animated_alpha = encoded(
        rgba, "WEBP", save_all=True, append_images=[frames[1].convert("RGBA")], lossless=True, exact=True
    )
    yield "animated-alpha.webp", animated_alpha
    # The same with the first frame's blending bit set: libwebp never blends the first frame.
    blended = bytearray(animated_alpha)
    blended[blended.index(b"ANMF") + 8 + 15] &= ~2
    yield "animated-alpha-blend.webp", bytes(blended)


# ---------------------------------------------------------------------------------------------------- BMP


def bmp(width, height, bits, pixel_data, *, palette=b"", compression=0, header_size=40, masks=None, colours=0):
    """A BMP file: `pixel_data` is already laid out (rows padded, bottom-up or RLE); negative `height` is
    top-down. 40-byte headers with bitfields get the masks after the header; larger ones inside it."""
    if header_size == 12:
        info = struct.pack("<HHHH", width, height, 1, bits)
    else:
        info = struct.pack("<iiHHIIiiII", width, height, 1, bits, compression, len(pixel_data), 2835, 2835, colours, 0)
        if header_size > 40:
            info += struct.pack("<IIII", *(masks or (0, 0, 0, 0)))[: header_size - 40]
            info += b"\0" * (header_size - 4 - len(info))
    extra = struct.pack("<III", *masks[:3]) if masks and header_size == 40 else b""
    offset = 14 + 4 + len(info) + len(extra) + len(palette)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixel_data), 0, 0, offset)
    return file_header + struct.pack("<I", header_size) + info + extra + palette + pixel_data


def bmp_rows(rows, bits, top_down=False):
    """Row bytes (one `bytes` per row, top first) laid out as BMP stores them, each padded to 4 bytes."""
    stride = (len(rows[0]) + 3) // 4 * 4 if bits >= 8 else None
    padded = [row.ljust(stride or (len(row) + 3) // 4 * 4, b"\0") for row in rows]
    return b"".join(padded if top_down else padded[::-1])


def rle8(rows):
    """RLE8 of index rows (bottom row first as stored): runs, an absolute run, a delta, end of line/bitmap."""
    out = bytearray()
    for number, row in enumerate(rows):
        row = list(row)
        if number == 1:
            # Skip 3 pixels with a delta: Pillow leaves index 0 there.
            out += bytes([0, 2, 3, 0])
            row = row[3:]
        position = 0
        while position < len(row):
            run = 1
            while position + run < len(row) and row[position + run] == row[position] and run < 255:
                run += 1
            if run >= 3 or len(row) - position < 3:
                out += bytes([run, row[position]])
                position += run
            else:
                literal = row[position : position + 3]
                out += bytes([0, 3]) + bytes(literal) + b"\0"
                position += 3
        out += b"\0\0"
    return bytes(out[:-2]) + b"\0\1"


def rle4(rows):
    """RLE4 of 4-bit index rows: pairs in encoded runs and one absolute run per row."""
    out = bytearray()
    for row in rows:
        row = list(row)
        literal = row[:5]
        packed = bytes((literal[i] << 4 | (literal[i + 1] if i + 1 < len(literal) else 0)) for i in range(0, 5, 2))
        out += bytes([0, 5]) + packed + b"\0"
        rest = row[5:]
        for i in range(0, len(rest), 2):
            pair = rest[i : i + 2]
            out += bytes([len(pair), pair[0] << 4 | (pair[1] if len(pair) > 1 else 0)])
        out += b"\0\0"
    return bytes(out[:-2]) + b"\0\1"


def bmp_cases(rng):
    width, height = 13, 7
    photo = picture(width, height)
    bgr = [row[:, ::-1].tobytes() for row in photo]
    palette = rng.integers(0, 256, size=(16, 4)).astype(np.uint8)
    palette[:, 3] = 0
    indices = rng.integers(0, 16, size=(height, width))
    yield "rgb24.bmp", encoded(Image.fromarray(photo), "BMP")
    yield "top-down.bmp", bmp(width, -height, 24, bmp_rows(bgr, 24, top_down=True))
    yield "os2.bmp", bmp(width, height, 24, bmp_rows(bgr, 24), header_size=12)
    bgrx = [np.concatenate([row[:, ::-1], np.full((width, 1), 99, np.uint8)], axis=1).tobytes() for row in photo]
    yield "bgrx32.bmp", bmp(width, height, 32, bmp_rows(bgrx, 32))
    rgba = [np.concatenate([row, np.full((width, 1), 7, np.uint8)], axis=1).tobytes() for row in photo]
    yield "rgba32-bitfields.bmp", bmp(
        width, height, 32, bmp_rows(rgba, 32), compression=3, header_size=56,
        masks=(0xFF, 0xFF00, 0xFF0000, 0xFF000000),
    )
    five = photo.astype(np.uint16) >> 3
    words = [(r << 10 | g << 5 | b).astype("<u2").tobytes() for r, g, b in zip(*np.moveaxis(five, 2, 0))]
    yield "rgb555.bmp", bmp(width, height, 16, bmp_rows(words, 16))
    six = (photo[..., 1].astype(np.uint16) >> 2)
    words = [(r << 11 | g << 5 | b).astype("<u2").tobytes() for r, g, b in zip(five[..., 0], six, five[..., 2])]
    yield "rgb565.bmp", bmp(width, height, 16, bmp_rows(words, 16), compression=3, masks=(0xF800, 0x7E0, 0x1F))
    yield "palette8.bmp", encoded(Image.fromarray(photo).quantize(colors=40), "BMP")
    rows4 = packed_rows(indices, 4)
    yield "palette4.bmp", bmp(width, height, 4, bmp_rows(rows4, 4), palette=palette.tobytes())
    rows1 = packed_rows(indices & 1, 1)
    yield "palette1.bmp", bmp(width, height, 1, bmp_rows(rows1, 1), palette=palette[:2].tobytes())
    # 6 palette entries, indices up to 15: black past the palette.
    rows8 = [bytes(int(i) for i in row) for row in indices]
    yield "short-palette.bmp", bmp(width, height, 8, bmp_rows(rows8, 8), palette=palette[:6].tobytes(), colours=6)
    yield "bilevel.bmp", encoded(Image.fromarray(photo).convert("1"), "BMP")
    yield "gray8.bmp", encoded(Image.fromarray(photo).convert("L"), "BMP")
    stored = [list(row) for row in indices[::-1]]
    stored[0][:6] = [4] * 6
    yield "rle8.bmp", bmp(width, height, 8, rle8(stored), palette=palette.tobytes(), compression=1)
    yield "rle4.bmp", bmp(width, height, 4, rle4(stored), palette=palette.tobytes(), compression=2)


# ---------------------------------------------------------------------------------------------------- TIFF


def packbits(data):
    """PackBits with literal runs only (valid, not small)."""
    return b"".join(bytes([len(data[i : i + 128]) - 1]) + data[i : i + 128] for i in range(0, len(data), 128))


def tiff(samples, *, photometric, bits=8, big_endian=False, compression=1, tile=None, rows_per_strip=4,
         extra_samples=(), predictor=1, extra_tags=()):
    """A one-IFD baseline TIFF. `samples` is (height, width, channels) of uint8/uint16, or (height, width)
    of values below 2**bits for bit depths under 8. Strips of `rows_per_strip` rows, or `tile` (w, h)."""
    order = ">" if big_endian else "<"
    if samples.ndim == 2:
        samples = samples[..., None]
    height, width, channels = samples.shape

    def chunk_bytes(block):
        if bits < 8:
            data = b"".join(packed_rows(block[..., 0], bits))
        else:
            block = block.astype(order + ("u2" if bits == 16 else "u1"))
            if predictor == 2:
                block = block.copy()
                block[:, 1:] = (block[:, 1:].astype(np.int64) - block[:, :-1].astype(np.int64)) % (1 << bits)
            data = block.tobytes()
        return {1: data, 8: zlib.compress(data), 32773: packbits(data)}[compression]

    if tile:
        tile_width, tile_height = tile
        padded = np.zeros((-(-height // tile_height) * tile_height, -(-width // tile_width) * tile_width, channels),
                          samples.dtype)
        padded[:height, :width] = samples
        chunks = [chunk_bytes(padded[y : y + tile_height, x : x + tile_width])
                  for y in range(0, padded.shape[0], tile_height) for x in range(0, padded.shape[1], tile_width)]
    else:
        chunks = [chunk_bytes(samples[y : y + rows_per_strip]) for y in range(0, height, rows_per_strip)]

    offsets, position = [], 8
    for chunk in chunks:
        offsets.append(position)
        position += len(chunk) + len(chunk) % 2
    data = b"".join(chunk + b"\0" * (len(chunk) % 2) for chunk in chunks)
    tags = {256: (4, [width]), 257: (4, [height]), 258: (3, [bits] * channels), 259: (3, [compression]),
            262: (3, [photometric]), 277: (3, [channels]), 284: (3, [1])}
    if tile:
        tags |= {322: (3, [tile[0]]), 323: (3, [tile[1]]), 324: (4, offsets), 325: (4, [len(c) for c in chunks])}
    else:
        tags |= {273: (4, offsets), 278: (3, [rows_per_strip]), 279: (4, [len(c) for c in chunks])}
    if extra_samples:
        tags[338] = (3, list(extra_samples))
    if predictor != 1:
        tags[317] = (3, [predictor])
    for tag, kind, values in extra_tags:
        tags[tag] = (kind, values)

    ifd_offset = position
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 7: 1}
    formats = {1: "B", 2: "B", 3: "H", 4: "I", 7: "B"}
    entries, overflow = b"", b""
    overflow_at = ifd_offset + 2 + 12 * len(tags) + 4
    for tag in sorted(tags):
        kind, values = tags[tag]
        payload = struct.pack(order + formats[kind] * len(values), *values)
        if len(payload) <= 4:
            field = payload.ljust(4, b"\0")
        else:
            field = struct.pack(order + "I", overflow_at + len(overflow))
            overflow += payload + b"\0" * (len(payload) % 2)
        entries += struct.pack(order + "HHI", tag, kind, len(values)) + field
    head = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(order + "I", ifd_offset)
    return head + data + struct.pack(order + "H", len(tags)) + entries + b"\0\0\0\0" + overflow


def tiff_cases(rng):
    photo = picture(13, 9)
    wide = photo.astype(np.uint16) * 257 + rng.integers(0, 257, size=photo.shape).astype(np.uint16)
    dark = rng.integers(0, 600, size=photo.shape[:2]).astype(np.uint16)
    alpha = rng.integers(0, 256, size=photo.shape[:2] + (1,)).astype(np.uint8)
    yield "rgb8.tif", tiff(photo, photometric=2)
    yield "rgb8-lzw.tif", encoded(Image.fromarray(photo), "TIFF", compression="tiff_lzw")
    yield "rgb8-packbits.tif", tiff(photo, photometric=2, compression=32773)
    yield "rgb8-tiles.tif", tiff(photo, photometric=2, compression=8, tile=(16, 16), big_endian=True)
    yield "rgb8-predictor.tif", tiff(photo, photometric=2, compression=8, predictor=2)
    yield "rgb16.tif", tiff(wide, photometric=2, bits=16)
    yield "rgb16-be.tif", tiff(wide, photometric=2, bits=16, big_endian=True, tile=(16, 16))
    yield "gray8.tif", tiff(photo[..., 1], photometric=1)
    yield "min-is-white.tif", tiff(photo[..., 1], photometric=0)
    yield "gray4.tif", tiff(photo[..., 1] >> 4, photometric=1, bits=4)
    yield "bilevel.tif", tiff(photo[..., 1] >> 7, photometric=0, bits=1)
    yield "gray16.tif", tiff(dark, photometric=1, bits=16)
    yield "gray16-be.tif", tiff(dark, photometric=1, bits=16, big_endian=True)
    rgba = np.concatenate([photo, alpha], axis=2)
    yield "rgba8.tif", tiff(rgba, photometric=2, extra_samples=[2])
    # Associated (premultiplied) alpha: Pillow's raw mode `RGBa` divides it out.
    premultiplied = np.concatenate([(photo.astype(np.uint16) * alpha // 255).astype(np.uint8), alpha], axis=2)
    yield "rgba8-associated.tif", tiff(premultiplied, photometric=2, extra_samples=[1])
    yield "rgbx8.tif", tiff(rgba, photometric=2, extra_samples=[0])
    yield "rgba8-undeclared.tif", tiff(rgba, photometric=2)
    # Associated alpha and an unspecified sample after it (Pillow's `RGBaX`).
    yield "rgbax8.tif", tiff(np.concatenate([premultiplied, alpha], axis=2), photometric=2, extra_samples=[1, 0])
    yield "rgba16-associated.tif", tiff(
        np.concatenate([wide, alpha.astype(np.uint16) * 257], axis=2), photometric=2, bits=16, extra_samples=[1]
    )
    yield "gray-alpha.tif", tiff(np.concatenate([photo[..., :1], alpha], axis=2), photometric=1, extra_samples=[2])
    yield "cmyk.tif", encoded(Image.fromarray(photo).convert("CMYK"), "TIFF")
    cmyk = np.asarray(Image.fromarray(photo).convert("CMYK"))
    yield "cmyk16.tif", tiff(cmyk.astype(np.uint16) * 257, photometric=5, bits=16)


# ---------------------------------------------------------------------------------------------------- EXIF


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def xmp_packet(orientation):
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        f'tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>'
    ).encode()


def orientation_cases(_rng):
    """7x5 pictures carrying an orientation (EXIF in each container, XMP, a PNG text chunk)."""
    base = Image.fromarray(picture(7, 5))
    for orientation in range(2, 9):
        yield f"orient-{orientation}.jpg", encoded(base, "JPEG", quality=95, exif=exif_bytes(orientation))
    yield "orient-6.png", encoded(base, "PNG", exif=exif_bytes(6))
    # eXIf after the image data: Pillow reads it when the image loads, before exif_transpose looks.
    plain = encoded(base, "PNG")
    end = plain.index(b"IEND") - 4
    tiff_exif = exif_bytes(7)[6:]
    yield "orient-7-after-idat.png", plain[:end] + png_chunk(b"eXIf", tiff_exif) + plain[end:]
    raw_profile = f"\nexif\n{len(exif_bytes(5)):8}\n{exif_bytes(5).hex()}\n".encode()
    ztxt = png_chunk(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(raw_profile))
    yield "orient-5-raw-profile.png", plain[:33] + ztxt + plain[33:]
    itxt = png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp_packet(8))
    yield "orient-8-xmp.png", plain[:33] + itxt + plain[33:]
    yield "orient-3.webp", encoded(base, "WEBP", lossless=True, exif=exif_bytes(3))
    yield "orient-2-xmp.webp", encoded(base, "WEBP", lossless=True, xmp=xmp_packet(2))
    yield "orient-4-xmp.jpg", encoded(base, "JPEG", quality=95, xmp=xmp_packet(4))
    yield "orient-8.tif", tiff(np.asarray(base), photometric=2, extra_tags=[(274, 3, [8])])


def cases():
    rng = np.random.default_rng(SEED)
    for family in (png_cases, gif_cases, webp_cases, bmp_cases, tiff_cases, orientation_cases):
        yield from family(rng)


def write(directory):
    directory.mkdir(exist_ok=True)
    for name, data in cases():
        (directory / name).write_bytes(data)
        with Image.open(directory / name) as image:
            if name.startswith("orient-"):
                image = ImageOps.exif_transpose(image)
            (directory / f"{name}.rgb").write_bytes(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes())
