"""images/safety_score@1: the safety_classifier model's probability that the image is unsafe."""

from compute import Model, signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from compute.triton.inputs import image_tensor
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import SafetyScore


@signal(galaxy="images", name="safety_score", version=1, source=IMAGES, model="safety_classifier")
async def safety_score(event: ImageEvent, model: Model) -> SafetyScore:
    outputs = await model.infer(image_tensor(image_array(event)))
    return SafetyScore(
        score=float(outputs["SCORE"][0]), label="unsafe", model_version=model.used_version
    )
