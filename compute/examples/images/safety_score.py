"""images/safety_score: the probability that the image is unsafe, and a label from it.

- ``safety_score@1``: the safety_classifier model (a logistic stand-in over colour and
  texture); label ``unsafe`` from a score of 0.5, else ``safe``.
- ``safety_score@2``: Yahoo's open_nsfw model, P(NSFW); labels from Yahoo's guidance:
  ``safe`` below 0.2, ``unsafe`` from 0.8, ``uncertain`` between.
"""

from compute import Model, signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from compute.triton.inputs import image_tensor, open_nsfw_input
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import SafetyScore

V1_UNSAFE_FROM = 0.5
# Yahoo's open_nsfw README: below 0.2 safe with high probability, above 0.8 NSFW with high
# probability; scores between are uncertain and best left to a person or a stricter policy.
V2_SAFE_BELOW = 0.2
V2_UNSAFE_FROM = 0.8


def label_v1(score: float) -> str:
    """``unsafe`` from V1_UNSAFE_FROM, else ``safe``."""
    return "unsafe" if score >= V1_UNSAFE_FROM else "safe"


def label_v2(score: float) -> str:
    """``safe`` below V2_SAFE_BELOW, ``unsafe`` from V2_UNSAFE_FROM, ``uncertain`` between."""
    if score < V2_SAFE_BELOW:
        return "safe"
    return "unsafe" if score >= V2_UNSAFE_FROM else "uncertain"


@signal(galaxy="images", name="safety_score", version=1, source=IMAGES, model="safety_classifier")
async def safety_score(event: ImageEvent, model: Model) -> SafetyScore:
    outputs = await model.infer(image_tensor(image_array(event)))
    score = float(outputs["SCORE"][0])
    return SafetyScore(score=score, label=label_v1(score), model_version=model.used_version)


@signal(galaxy="images", name="safety_score", version=2, source=IMAGES, model="open_nsfw")
async def safety_score_v2(event: ImageEvent, model: Model) -> SafetyScore:
    outputs = await model.infer(open_nsfw_input(image_array(event)))
    score = float(outputs["NSFW"][0])
    return SafetyScore(score=score, label=label_v2(score), model_version=model.used_version)
