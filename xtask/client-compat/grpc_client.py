# The seed's gRPC client, unchanged: tensorflow-serving-api stubs and tf.make_tensor_proto.
import base64

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

with open("cat.jpg", "rb") as f:
    image_b64 = base64.urlsafe_b64encode(f.read()).decode("utf-8")

channel = grpc.insecure_channel("localhost:8500")
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
request = predict_pb2.PredictRequest()
request.model_spec.name = "vit"
request.model_spec.signature_name = "serving_default"
request.inputs["string_input"].CopyFrom(tf.make_tensor_proto([image_b64]))
response = stub.Predict(request, 10.0)
print(response)
