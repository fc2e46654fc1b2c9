"""The layer schedule: which physical blocks run, in which order, on the encoder and decoder side of the U-Net.

Without recurrence the order is 0..L-1; with it the segment [loop_start, loop_end] runs 1 + num_loops times::

    L=11, loop 3..5, 2 loops:  0 1 2 [3 4 5] [3 4 5] [3 4 5] 6 7 8 9 10   (17 applications)
                               |----- encoder (8) -----|----- decoder (9) -----|

The order is cut in half (encoder gets the floor); encoder outputs are pushed on a stack and popped (LIFO) into
the first decoder applications as U-Net skips.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSchedule:
    encoder: tuple[int, ...]
    decoder: tuple[int, ...]

    @property
    def order(self) -> tuple[int, ...]:
        return self.encoder + self.decoder

    @property
    def num_skips(self) -> int:
        return min(len(self.encoder), len(self.decoder))


def layer_schedule(num_layers: int, loop_start: int, loop_end: int, num_loops: int, looped: bool) -> LayerSchedule:
    """The schedule with recurrence on (``looped``) or off."""
    order = list(range(num_layers))
    if looped and num_loops:
        segment = order[loop_start : loop_end + 1]
        order = order[:loop_start] + segment * (1 + num_loops) + order[loop_end + 1 :]
    half = len(order) // 2
    return LayerSchedule(tuple(order[:half]), tuple(order[half:]))
