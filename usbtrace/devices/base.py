"""What the bus driver asks of a USB device backend.

A backend performs one transfer at a time and says how it ended: a USBD
status, the bytes moved, and how long it took on the bus.  The bus driver
turns that into a delayed completion on the kernel's clock.  IN transfers fill
the caller's buffer in place, as pyusb's ``read`` into an array does, so no
payload is copied on the way up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from typing import NamedTuple

from usbtrace.usb.speed import Speed
from usbtrace.usb.urb import USBD_STATUS_SUCCESS


class TransferResult(NamedTuple):
    status: int  # USBD status
    actual: int  # bytes moved
    duration_ns: int


# TransferResult(status, actual, duration_ns) without the Python frame of a named
# tuple's __new__: a simulated device makes one for every URB
make_result = partial(tuple.__new__, TransferResult)
RESULTS_KEPT = 256  # lengths whose results a SuccessResults keeps


class SuccessResults(dict[int, TransferResult]):
    """``results[n]``: the result of a successful transfer of ``n`` bytes at ``speed``
    (``Speed.transfer_ns``'s duration), made once a length.  A result is an immutable
    tuple, and a device moves the same few lengths again and again; a stream of ever
    new lengths empties it rather than grows it."""

    def __init__(self, speed: Speed) -> None:
        super().__init__()
        self.speed = speed

    def __missing__(self, n: int) -> TransferResult:
        if len(self) >= RESULTS_KEPT:
            self.clear()
        speed = self.speed  # Speed.transfer_ns, inline: the same nanoseconds
        result = self[n] = make_result((USBD_STATUS_SUCCESS, n, speed.latency_ns +
                                        int(n * 1e9 / speed.bytes_per_second)))
        return result


class DeviceBackend(ABC):
    """One USB device as the bus sees it."""

    speed: Speed
    connected: bool = True

    @abstractmethod
    def control(self, setup: bytes, buffer: bytearray | memoryview) -> TransferResult:
        """A control transfer: SETUP, then IN into ``buffer`` or OUT from it."""

    @abstractmethod
    def bulk_out(self, endpoint: int, data: bytearray | memoryview) -> TransferResult: ...

    @abstractmethod
    def bulk_in(self, endpoint: int, buffer: bytearray | memoryview) -> TransferResult: ...

    @abstractmethod
    def clear_halt(self, endpoint: int) -> TransferResult:
        """CLEAR_FEATURE(ENDPOINT_HALT) on ``endpoint`` (and the host's toggle reset)."""

    def stream_in(self, endpoint: int, stream: int,
                  buffer: bytearray | memoryview) -> TransferResult:
        """A bulk IN on stream ``stream`` of ``endpoint`` (USB 3.2 §8.12.1.4); a backend
        without streams takes it as a plain bulk IN.  A device with nothing to send yet
        may answer ``USBD_STATUS_PENDING`` (NAK): the controller keeps the transfer and
        tries it again later."""
        return self.bulk_in(endpoint, buffer)

    def stream_out(self, endpoint: int, stream: int,
                   data: bytearray | memoryview) -> TransferResult:
        """A bulk OUT on stream ``stream`` of ``endpoint`` (see ``stream_in``)."""
        return self.bulk_out(endpoint, data)

    def reset_port(self) -> None:
        """A bus reset of the device's port."""

    def close(self) -> None:
        """Release whatever the backend holds (files, handles)."""


def read_configuration(backend: DeviceBackend) -> bytes:
    """The whole configuration descriptor: its 9-byte header first, for wTotalLength,
    then all of it, as every host reads it."""
    from usbtrace.usb import descriptors as d
    from usbtrace.usb import setup as std

    head = bytearray(9)
    backend.control(std.build_setup(0x80, std.GET_DESCRIPTOR, d.CONFIGURATION << 8, 0, 9), head)
    total = int.from_bytes(head[2:4], "little")
    blob = bytearray(total)
    result = backend.control(
        std.build_setup(0x80, std.GET_DESCRIPTOR, d.CONFIGURATION << 8, 0, total), blob)
    return bytes(blob[: result.actual])
