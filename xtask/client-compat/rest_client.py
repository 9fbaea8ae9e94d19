# The seed's REST client, unchanged: the image as base64 text in a plain JSON string, decoded by the model.
import base64
import json

import requests

with open("cat.jpg", "rb") as f:
    image_b64 = base64.urlsafe_b64encode(f.read()).decode("utf-8")

response = requests.post(
    "http://localhost:8501/v1/models/vit:predict",
    json={"instances": [image_b64]},
)
response.raise_for_status()
print(json.dumps(response.json()))
