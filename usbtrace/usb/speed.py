"""Bus speeds and the time a transfer takes on the wire, for the virtual clock.

Rates are the payload ceilings of bulk transfers: full speed 19 x 64-byte
packets a 1 ms frame, high speed 13 x 512-byte packets a 125 us microframe,
SuperSpeed the practical 450 MB/s of a 5 Gbit/s link after 8b/10b coding and
protocol overhead.  The latency is the scheduling granularity a transfer waits
for before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Speed:
    name: str
    usbmon_code: int  # enum usb_device_speed in Linux: 2 full, 3 high, 5 super
    usbpcap_code: int
    bulk_max_packet: int
    control_max_packet: int
    bytes_per_second: float
    latency_ns: int
    bcd_usb: int

    def transfer_ns(self, length: int) -> int:
        return self.latency_ns + int(length * 1e9 / self.bytes_per_second)


SPEEDS = {
    "full": Speed("full", 2, 1, 64, 64, 19 * 64 * 1000.0, 1_000_000, 0x0200),
    "high": Speed("high", 3, 2, 512, 64, 13 * 512 * 8000.0, 125_000, 0x0200),
    "super": Speed("super", 5, 3, 1024, 512, 450e6, 20_000, 0x0320),
}
