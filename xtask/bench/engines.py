"""The Python side of `cargo xtask bench`: ONNX Runtime (fp32 and dynamic int8), OpenVINO (fp32, its
default precision, and NNCF int8), PyTorch eager, and the Python serving pipeline a user would write
(PIL + ViTImageProcessor + ONNX Runtime).

Four modes, all driven by xtask/src/bench.rs:

  engines.py quantize SRC DST        write ONNX Runtime's `quantize_dynamic` int8 model of SRC to DST
  engines.py quantize-nncf SRC DST --checkpoint DIR --images FILE...
                                     write NNCF's post-training int8 OpenVINO IR of SRC to DST (.xml),
                                     calibrated on the images and their mirror images
  engines.py cold ENGINE [options]   load one engine in this fresh process, run one batch-1 inference,
                                     print {"load_s", "first_s", "peak_rss_mb"} and exit
  engines.py serve [options]         read one JSON command per line on stdin, answer one JSON line on
                                     stdout; the Rust side alternates engines round by round through it

Engines: ort, ort-int8, openvino (INFERENCE_PRECISION_HINT=f32), openvino-default (the CPU plugin's
own choice: bf16 on CPUs with AVX512_BF16 or AMX), openvino-int8, torch (model only, random
pixel_values), python-e2e (base64 JPEG strings -> labels) and python-prep (one image's decode +
ViTImageProcessor, the preprocessing alone). Every engine uses `--threads` intra-op threads (2 by default)
and one inter-op thread; OpenVINO runs one stream with PERFORMANCE_HINT=LATENCY and its default thread
pinning. Engines with settings worth recording (OpenVINO's chosen precision) report them as `properties`
in the load and cold replies.
"""

import argparse
import base64
import io
import json
import resource
import sys
import time

import numpy as np

# Printed on stdout by nothing but `reply`, so the protocol stream stays clean whatever libraries log.
PROTOCOL = sys.stdout
sys.stdout = sys.stderr


def reply(value):
    PROTOCOL.write(json.dumps(value) + "\n")
    PROTOCOL.flush()


def ort_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def image_processor(checkpoint):
    # The PIL implementation explicitly: the default class needs torchvision, and this is what
    # transformers falls back to without it anyway.
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil.from_pretrained(checkpoint)


def encoded(images):
    """The files as the base64 strings a client sends."""
    strings = []
    for path in images:
        with open(path, "rb") as file:
            strings.append(base64.b64encode(file.read()))
    return strings


class RandomPixels:
    """Model-only engines' inputs: the same random pixel_values per batch size for every engine."""

    properties = {}

    def __init__(self, side):
        self.side = side
        self.inputs = {}

    def pixels(self, batch):
        if batch not in self.inputs:
            rng = np.random.default_rng(batch)
            shape = (batch, 3, self.side, self.side)
            self.inputs[batch] = rng.standard_normal(shape, dtype=np.float32)
        return self.inputs[batch]


class OrtEngine(RandomPixels):
    def __init__(self, path, threads, side):
        super().__init__(side)
        self.session = ort_session(path, threads)
        self.input = self.session.get_inputs()[0].name

    def run(self, batch):
        return self.session.run(None, {self.input: self.pixels(batch)})[0]


class OpenVinoEngine(RandomPixels):
    """OpenVINO's CPU plugin on an ONNX model or IR; `precision` None leaves the plugin its default."""

    def __init__(self, path, threads, side, precision):
        import openvino as ov

        super().__init__(side)
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = compiled.create_infer_request()
        keys = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING")
        values = {key: compiled.get_property(key) for key in keys}
        # An ov.Type prints as "<Type: 'bfloat16'>"; its type name is OpenVINO's own spelling, "bf16".
        self.properties = {
            key: value.get_type_name() if isinstance(value, ov.Type) else str(value)
            for key, value in values.items()
        }
        self.properties["version"] = ov.get_version()

    def run(self, batch):
        return self.request.infer({0: self.pixels(batch)}, share_inputs=True)[0]


class TorchEngine:
    def __init__(self, checkpoint, threads, side):
        import torch
        from transformers import ViTForImageClassification

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.torch = torch
        self.model = ViTForImageClassification.from_pretrained(checkpoint).eval()
        self.side = side
        self.inputs = {}

    def run(self, batch):
        if batch not in self.inputs:
            generator = self.torch.Generator().manual_seed(batch)
            shape = (batch, 3, self.side, self.side)
            self.inputs[batch] = self.torch.randn(shape, generator=generator)
        with self.torch.inference_mode():
            return self.model(pixel_values=self.inputs[batch]).logits


class PipelineEngine:
    """What a Python service does per request: base64 -> PIL -> ViTImageProcessor -> ORT -> label."""

    def __init__(self, onnx, checkpoint, threads, images):
        from PIL import Image

        self.image = Image
        self.processor = image_processor(checkpoint)
        self.session = ort_session(onnx, threads)
        self.input = self.session.get_inputs()[0].name
        with open(f"{checkpoint}/config.json") as config:
            id2label = json.load(config)["id2label"]
        self.labels = [id2label[str(i)] for i in range(len(id2label))]
        self.strings = encoded(images)
        self.next = 0

    def take(self, count):
        picked = [self.strings[(self.next + i) % len(self.strings)] for i in range(count)]
        self.next += count
        return picked

    def pixel_values(self, strings):
        images = [self.image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in strings]
        return self.processor(images=images, return_tensors="np")["pixel_values"]

    def run(self, batch):
        logits = self.session.run(None, {self.input: self.pixel_values(self.take(batch))})[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        classes = probabilities.argmax(axis=1)
        return [(self.labels[c], float(probabilities[i, c])) for i, c in enumerate(classes)]


class PreprocessEngine(PipelineEngine):
    """The pipeline's preprocessing alone, one image per call."""

    def __init__(self, checkpoint, images):
        from PIL import Image

        self.image = Image
        self.processor = image_processor(checkpoint)
        self.strings = encoded(images)
        self.next = 0

    def run(self, batch):
        return self.pixel_values(self.take(batch))


def make_engine(name, args):
    if name == "ort":
        return OrtEngine(args.onnx, args.threads, args.side)
    if name == "ort-int8":
        return OrtEngine(args.onnx_int8, args.threads, args.side)
    if name == "openvino":
        return OpenVinoEngine(args.onnx, args.threads, args.side, "f32")
    if name == "openvino-default":
        return OpenVinoEngine(args.onnx, args.threads, args.side, None)
    if name == "openvino-int8":
        return OpenVinoEngine(args.openvino_int8, args.threads, args.side, None)
    if name == "torch":
        return TorchEngine(args.checkpoint, args.threads, args.side)
    if name == "python-e2e":
        return PipelineEngine(args.onnx, args.checkpoint, args.threads, args.images)
    if name == "python-prep":
        return PreprocessEngine(args.checkpoint, args.images)
    raise ValueError(f"unknown engine {name!r}")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def serve(args):
    engines = {}
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "load":
                started = time.perf_counter()
                engine = make_engine(command["engine"], args)
                engines[command["engine"]] = engine
                seconds = time.perf_counter() - started
                reply({"seconds": seconds, "properties": getattr(engine, "properties", {})})
            elif op == "run":
                engine = engines[command["engine"]]
                latencies = []
                for _ in range(command["iters"]):
                    started = time.perf_counter()
                    engine.run(command["batch"])
                    latencies.append(time.perf_counter() - started)
                reply({"latencies": latencies})
            elif op == "quit":
                reply({})
                return
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as error:  # reported to the Rust side, which stops the benchmark
            reply({"error": f"{type(error).__name__}: {error}"})


def cold(args):
    started = time.perf_counter()
    engine = make_engine(args.engine, args)
    loaded = time.perf_counter()
    engine.run(1)
    reply(
        {
            "load_s": loaded - started,
            "first_s": time.perf_counter() - loaded,
            "peak_rss_mb": peak_rss_mb(),
            "properties": getattr(engine, "properties", {}),
        }
    )


def quantize(args):
    import os
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's recorded intermediate shapes contradict ONNX's own shape inference (the classifier's
    # 768 vs 1000), which the quantizer runs: drop them and let it infer afresh.
    model = onnx.load(args.source)
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as scratch:
        stripped = os.path.join(scratch, "model.onnx")
        onnx.save(model, stripped)
        quantize_dynamic(stripped, args.destination, weight_type=QuantType.QInt8)


def quantize_nncf(args):
    import nncf
    import openvino as ov
    from PIL import Image, ImageOps

    # The bench's images and their mirror images (16 samples for the 8 fixture photos), preprocessed as
    # the model expects, one per calibration step.
    processor = image_processor(args.checkpoint)
    photos = [Image.open(path).convert("RGB") for path in args.images]
    photos += [ImageOps.mirror(photo) for photo in photos]
    samples = [processor(images=[photo], return_tensors="np")["pixel_values"] for photo in photos]
    model = ov.Core().read_model(args.source)
    quantized = nncf.quantize(
        model, nncf.Dataset(samples), subset_size=len(samples), model_type=nncf.ModelType.TRANSFORMER
    )
    # compress_to_fp16 would also halve the weights NNCF left in f32, which the ONNX engines keep.
    ov.save_model(quantized, args.destination, compress_to_fp16=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    q = modes.add_parser("quantize")
    q.add_argument("source")
    q.add_argument("destination")
    n = modes.add_parser("quantize-nncf")
    n.add_argument("source")
    n.add_argument("destination")
    n.add_argument("--checkpoint", required=True)
    n.add_argument("--images", nargs="+", required=True)
    for mode in ("serve", "cold"):
        m = modes.add_parser(mode)
        if mode == "cold":
            m.add_argument("engine")
        m.add_argument("--onnx", required=True)
        m.add_argument("--onnx-int8")
        m.add_argument("--openvino-int8")
        m.add_argument("--checkpoint", required=True)
        m.add_argument("--images", nargs="*", default=[])
        m.add_argument("--threads", type=int, default=2)
        m.add_argument("--side", type=int, default=224)
    args = parser.parse_args()
    modes = {"quantize": quantize, "quantize-nncf": quantize_nncf, "serve": serve, "cold": cold}
    modes[args.mode](args)


if __name__ == "__main__":
    main()
