"""Open Inference Protocol (KServe v2) round trip with NVIDIA's tritonclient, as a KServe/Triton user writes it.

Usage: triton_client.py HTTP_URL GRPC_URL MODEL IMAGE...
For every image and every way tritonclient can send it (HTTP binary extension, HTTP JSON, gRPC raw
contents), prints one JSON line {"client", "image", "label", "confidence"}. Fails on any client error.
"""

import base64
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def http_infer(client, model, payload, binary):
    """One HTTP infer; `binary` picks the binary data extension (tritonclient's default) or plain JSON."""
    if binary:
        data = np.array([payload], dtype=np.object_)
    else:
        # JSON `data` must be text: base64, which kiln decodes like TF Serving's string inputs.
        data = np.array([base64.b64encode(payload)], dtype=np.object_)
    tensor = httpclient.InferInput("string_input", [1], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("label", "confidence")]
    return client.infer(model, [tensor], outputs=outputs)


def grpc_infer(client, model, payload):
    tensor = grpcclient.InferInput("string_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=np.object_))
    return client.infer(model, [tensor])


def main():
    http_url, grpc_url, model, images = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(model)
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(model)
    metadata = http.get_model_metadata(model)
    assert metadata["inputs"] == [{"name": "string_input", "datatype": "BYTES", "shape": [-1]}], metadata
    assert grpc.get_model_metadata(model).inputs[0].datatype == "BYTES"
    for path in images:
        with open(path, "rb") as f:
            payload = f.read()
        answers = {
            "http-binary": http_infer(http, model, payload, binary=True),
            "http-json": http_infer(http, model, payload, binary=False),
            "grpc-raw": grpc_infer(grpc, model, payload),
        }
        for name, result in answers.items():
            label = result.as_numpy("label")[0]
            label = label.decode() if isinstance(label, bytes) else str(label)
            confidence = float(result.as_numpy("confidence")[0])
            print(json.dumps({"client": name, "image": path, "label": label, "confidence": confidence}))


if __name__ == "__main__":
    main()
