"""Writes the fuzz targets' seed corpora (crates/fuzz/seeds/<target>/) deterministically.

Run once with the fixture venv (Pillow only): `/tmp/kiln-venv/bin/python crates/fuzz/seeds/generate.py`.
Seeds are small on purpose: libFuzzer's default input size limit is the largest seed, and a few hundred
bytes keep each execution fast while still reaching every decoder and parser branch.
"""

import base64
import hashlib
import io
import json
import pathlib

from PIL import Image

SEEDS = pathlib.Path(__file__).resolve().parent
FIXTURES = SEEDS.parents[2] / "fixtures"
# Content of the graph file the artifact_manifest target writes beside each manifest.
GRAPH_SHA256 = hashlib.sha256(b"kiln fuzz graph\n").hexdigest()


def write(target, name, data):
    path = SEEDS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def gradient(mode, size=(9, 7)):
    image = Image.new("RGB", size)
    image.putdata([(x * 28, y * 36, (x + y) * 16) for y in range(size[1]) for x in range(size[0])])
    return image.convert(mode)


def encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def image_seeds():
    tiny = (FIXTURES / "images" / "tiny-7x5.jpg").read_bytes()
    write("image_prepare", "tiny-7x5.jpg", tiny)
    write("image_prepare", "tiny-7x5.b64", base64.b64encode(tiny))
    write("image_prepare", "tiny-7x5.urlsafe-b64", base64.urlsafe_b64encode(tiny).rstrip(b"="))
    write("image_prepare", "baseline-420.jpg", encoded(gradient("RGB"), "JPEG", quality=80, subsampling=2))
    write("image_prepare", "progressive-444.jpg", encoded(gradient("RGB"), "JPEG", progressive=True, subsampling=0))
    write("image_prepare", "grayscale.jpg", encoded(gradient("L"), "JPEG"))
    write("image_prepare", "cmyk.jpg", encoded(gradient("CMYK"), "JPEG"))
    write("image_prepare", "rgb.png", encoded(gradient("RGB"), "PNG"))
    write("image_prepare", "rgba.png", encoded(gradient("RGBA"), "PNG"))
    write("image_prepare", "palette.png", encoded(gradient("P"), "PNG"))
    write("image_prepare", "gray16.png", encoded(gradient("I;16"), "PNG"))
    write("image_prepare", "interlaced.png", encoded(gradient("RGB"), "PNG", interlace=1))
    write("image_prepare", "palette.gif", encoded(gradient("P"), "GIF", transparency=3))
    write("image_prepare", "lossy.webp", encoded(gradient("RGB"), "WEBP", quality=80))
    write("image_prepare", "lossless-alpha.webp", encoded(gradient("RGBA"), "WEBP", lossless=True))
    frames = [gradient("RGBA"), gradient("RGBA").transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    write("image_prepare", "animated.webp", encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    write("image_prepare", "rgb.bmp", encoded(gradient("RGB"), "BMP"))
    write("image_prepare", "palette.bmp", encoded(gradient("P"), "BMP"))
    write("image_prepare", "lzw.tif", encoded(gradient("RGB"), "TIFF", compression="tiff_lzw"))
    write("image_prepare", "gray16.tif", encoded(gradient("I;16"), "TIFF"))
    exif = Image.Exif()
    exif[0x0112] = 6
    write("image_prepare", "exif-6.jpg", encoded(gradient("RGB"), "JPEG", exif=exif.tobytes()))
    write("image_prepare", "truncated.jpg", tiny[: len(tiny) // 2])
    # The fixture's huge-65535x65535.jpg in small: a real header declaring 65535x65535.
    sof = tiny.index(b"\xff\xc0")
    huge = tiny[: sof + 5] + b"\xff\xff\xff\xff" + tiny[sof + 9 :]
    write("image_prepare", "huge-header.jpg", huge)


def rest_seeds():
    b64 = base64.b64encode((FIXTURES / "images" / "tiny-7x5.jpg").read_bytes()).decode()
    bodies = {
        "rows-plain.json": {"instances": ["aGVsbG8"]},
        "rows-b64.json": {"instances": [{"b64": b64}]},
        "rows-named.json": {"signature_name": "serving_default", "instances": [{"string_input": {"b64": "aGk="}}]},
        "columns.json": {"inputs": {"string_input": ["aGVsbG8", {"b64": "aGk"}]}},
        "columns-bare.json": {"inputs": [{"b64": "aGk="}]},
        "wrong-types.json": {"signature_name": 3, "instances": [1, None, [], {"b64": 2}]},
    }
    for name, body in bodies.items():
        write("rest_predict", name, json.dumps(body))
    write("rest_predict", "nested.json", '{"instances": ' + "[" * 40 + "]" * 40 + "}")
    write("rest_predict", "truncated.json", '{"instances": ["aGk=", {"b64": "')


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def number(field_number, value):
    """A varint field (wire type 0); negative values as protobuf's 10-byte two's complement."""
    return varint(field_number << 3) + varint(value & (2**64 - 1))


def tensor(dims, values, dtype=7):  # 7 = DT_STRING
    shape = b"".join(field(2, number(1, d)) for d in dims)
    return number(1, dtype) + field(2, shape) + b"".join(field(8, v) for v in values)


def predict_request(tensors, version=None, output_filter=()):
    spec = field(1, b"vit") + field(3, b"serving_default")
    if version is not None:
        spec += field(2, number(1, version))
    inputs = b"".join(field(2, field(1, alias) + field(2, t)) for alias, t in tensors)
    return field(1, spec) + inputs + b"".join(field(3, o) for o in output_filter)


def grpc_seeds():
    tiny = (FIXTURES / "images" / "tiny-7x5.jpg").read_bytes()
    write("grpc_predict", "one-raw.pb", predict_request([(b"string_input", tensor([1], [tiny[:64]]))]))
    write("grpc_predict", "two-b64.pb", predict_request([(b"string_input", tensor([2], [b"aGk=", b"eA"]))], version=3))
    write("grpc_predict", "broadcast.pb", predict_request([(b"string_input", tensor([4], [b"aGk="]))]))
    write("grpc_predict", "float.pb", predict_request([(b"x", tensor([1], [], dtype=1))], output_filter=[b"label"]))
    write("grpc_predict", "rank2.pb", predict_request([(b"string_input", tensor([1, 1], [b"aGk="]))]))
    # Regression input: broadcasting one value over shape [2^40] once aborted the server (see grpc.rs).
    write("grpc_predict", "broadcast-2pow40.pb", predict_request([(b"string_input", tensor([1 << 40], [b"aGk="]))]))
    write("grpc_predict", "negative.pb", predict_request([(b"string_input", tensor([-1], [b"aGk="]))], version=-2))


def config_seeds():
    configs = {
        "model-config.pbtxt": "model_config_list {\n  config {\n    name: 'vit'\n    base_path: '/models/vit'\n"
        "    model_platform: 'tensorflow'\n    model_version_policy { latest { num_versions: 2 } }\n"
        "    version_labels { key: 'stable' value: 42 }\n  }\n"
        '  config { name: "b" base_path: "/b" model_version_policy { specific { versions: 3 versions: 1 } } }\n'
        "  config { name: 'c' base_path: '/c' model_version_policy { all {} } }\n}\n",
        "batching.pbtxt": "max_batch_size { value: 16 } batch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 4 } num_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 8 allowed_batch_sizes: 16\n",
        "batching-list.pbtxt": "# comment\nmax_batch_size { value: 32 } allowed_batch_sizes: [8, 16, 32]",
        "monitoring.pbtxt": 'prometheus_config { enable: true, path: "/metrics" }\n',
        "escapes.pbtxt": "model_config_list { config { name: 'a\\'\\x41\\101\\n' base_path: \"/a\" } }",
    }
    for name, text in configs.items():
        write("textproto_config", name, text)


def manifest(**changes):
    value = {
        "format_version": 1,
        "graph": {"file": "graph.nnef.tar", "height": 8, "width": 8, "confidence_output": "confidence",
                  "class_output": "class", "precision": "f32"},
        "signatures": {"serving_default": {"method_name": "tensorflow/serving/predict",
            "inputs": {"string_input": {"dtype": "DT_STRING", "shape": [-1], "name": "serving_default_string_input:0"}},
            "outputs": {"label": {"dtype": "DT_STRING", "shape": [-1], "name": "StatefulPartitionedCall:1"}}}},
        "labels": ["cat", "dog"],
        "preprocess": {"resize": "pil", "resample": "bilinear", "rescale_factor": 0.003921569,
                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "provenance": {"exporter": "kiln-fuzz", "source_format": "safetensors",
                       "architecture": "ViTForImageClassification",
                       "sources": [{"path": "model.safetensors", "sha256": GRAPH_SHA256, "bytes": 16}],
                       "created_unix": 0},
        "warmup": [],
        "files": {"graph.nnef.tar": GRAPH_SHA256},
    }
    value.update(changes)
    return json.dumps(value, indent=2)


def manifest_seeds():
    write("artifact_manifest", "valid.json", manifest())
    write("artifact_manifest", "warmup.json", manifest(warmup=["graph.nnef.tar"]))
    write("artifact_manifest", "newer-format.json", manifest(format_version=2))
    write("artifact_manifest", "escaping-name.json", manifest(files={"../graph.nnef.tar": GRAPH_SHA256}))
    write("artifact_manifest", "missing-file.json", manifest(files={"graph.nnef.tar": GRAPH_SHA256, "w/x.jpg": "0" * 64}))
    write("artifact_manifest", "tf-resize.json", manifest(preprocess={"resize": "tf", "resample": "bilinear",
        "rescale_factor": 1.0, "mean": [0.0, 0.0, 0.0], "std": [0.0, 1.0, 1.0]}))


if __name__ == "__main__":
    image_seeds()
    rest_seeds()
    grpc_seeds()
    config_seeds()
    manifest_seeds()
