"""The content topics the images signals read."""

from compute import Source
from contract.v1.content_pb2 import ImageEvent

IMAGES = Source(topic="content.images", schema=ImageEvent, entity="image_signature")
