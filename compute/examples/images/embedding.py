"""images/embedding@1: the image_embedding model's 64-dimensional embedding of the image."""

from compute import Model, signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from compute.triton.inputs import image_tensor
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import Embedding


@signal(galaxy="images", name="embedding", version=1, source=IMAGES, model="image_embedding")
async def embedding(event: ImageEvent, model: Model) -> Embedding:
    outputs = await model.infer(image_tensor(image_array(event)))
    return Embedding(values=outputs["EMBEDDING"].tolist())
