"""The content topics the pins signals read."""

from compute import Source
from contract.v1.content_pb2 import PinEngagementEvent

PINS = Source(topic="content.pins", schema=PinEngagementEvent, entity="pin_id")
