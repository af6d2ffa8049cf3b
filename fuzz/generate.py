"""The campaign's inputs, each named by (campaign seed, index).

An input is made from its own ``random.Random`` seeded by the pair, so a worker can
make it where it runs (no bytes through the pipe, no parent core spent making them)
and the parent can make the very same one again to minimise a finding.
"""

from __future__ import annotations

import random

from fuzz.capture import Capture, window
from fuzz.mutate import mutate

WINDOW = 160  # packets of a seed per input: enough for a command's phases and metadata


def pick_input(rng: random.Random, seeds: list[Capture]) -> Capture:
    """A window of a seed capture (a third from its start), mutated one to four times."""
    seed = rng.choice(seeds)
    packets = len(seed.packet_indexes())
    # a third of the windows start at the beginning: enumeration and the first metadata
    start = rng.randrange(packets - WINDOW + 1) if packets > WINDOW and rng.random() < 0.67 \
        else 0
    base = window(seed, start, WINDOW) if packets > WINDOW else seed
    return mutate(rng, base, seeds)


def make_input(campaign: int, index: int, seeds: list[Capture]) -> Capture:
    """Input ``index`` of the campaign seeded ``campaign``: the same on every process."""
    return pick_input(random.Random(f"{campaign}/{index}"), seeds)
