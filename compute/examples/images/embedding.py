"""images/embedding: an embedding of the image for similarity search (cosine = dot product).

- ``embedding@1``: the image_embedding model's 64-dimensional random projection (a stand-in).
- ``embedding@2``: EfficientNet-Lite0's 1280-dimensional pooled ImageNet features from the
  efficientnet_lite0 model: crops, flips and re-encodings of a photo land nearest to it.
"""

from compute import Model, signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from compute.triton.inputs import efficientnet_input, image_tensor
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import Embedding


@signal(galaxy="images", name="embedding", version=1, source=IMAGES, model="image_embedding")
async def embedding(event: ImageEvent, model: Model) -> Embedding:
    outputs = await model.infer(image_tensor(image_array(event)))
    return Embedding(values=outputs["EMBEDDING"].tolist())


@signal(galaxy="images", name="embedding", version=2, source=IMAGES, model="efficientnet_lite0")
async def embedding_v2(event: ImageEvent, model: Model) -> Embedding:
    outputs = await model.infer(efficientnet_input(image_array(event)))
    return Embedding(values=outputs["EMBEDDING"].tolist())
