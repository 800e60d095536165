"""images/near_duplicate_of@1: the first-seen image whose dhash is within 6 bits of this one's.

A join of each image's ``dhash`` with the dhashes of every other image seen in the last
week that shares one of its hash bands. Split into 7 bands, two hashes at most 6 bits apart
agree on at least one band, so comparing within shared bands finds every near duplicate
without comparing all pairs. An image with no earlier near duplicate is its own canonical.
"""

from collections.abc import Sequence
from datetime import timedelta

from compute import Inputs, Match, signal
from contract.v1.signals_pb2 import DHash, NearDuplicate

MAX_DISTANCE = 6
# (start bit, width): 6 bands of 9 bits and one of 10 cover the 64 bits.
BANDS = [(start, 9) for start in range(0, 54, 9)] + [(54, 10)]


def bands(inputs: Inputs) -> list[tuple[int, int]]:
    value = inputs.get_as("dhash", DHash).hash
    return [(i, (value >> start) & ((1 << width) - 1)) for i, (start, width) in enumerate(BANDS)]


@signal(
    galaxy="images",
    name="near_duplicate_of",
    version=1,
    join=Match(inputs=("dhash",), keys=bands, ttl=timedelta(days=7)),
)
def near_duplicate_of(inputs: Inputs, peers: Sequence[Inputs]) -> NearDuplicate:
    mine = inputs.get_as("dhash", DHash).hash
    for peer in peers:  # oldest first
        if (peer.event_time, peer.entity_id) >= (inputs.event_time, inputs.entity_id):
            break
        distance = (mine ^ peer.get_as("dhash", DHash).hash).bit_count()
        if distance <= MAX_DISTANCE:
            return NearDuplicate(canonical_entity_id=peer.entity_id, hamming_distance=distance)
    return NearDuplicate(canonical_entity_id=inputs.entity_id, hamming_distance=0)
