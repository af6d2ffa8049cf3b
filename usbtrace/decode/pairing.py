"""Stage 1: pair each submission with its completion into one exchange.

The key is the filter position, the IRP id (USBPcap: the IRP address;
usbmon: the URB id) and the endpoint: QEMU's usbmon-format recordings give
every URB the id 0, and the endpoint still tells their transfers apart.  An
IRP that passes a filter several times in a row — the SRB IRP that usbstor
re-sends for CBW, data and CSW — pairs once per pass, since a pass completes
before the next begins.  A completion without a
submission (a capture that started mid-transfer) still yields an exchange,
with no submission time; submissions never completed are flushed at the end.

Sans-I/O: ``feed(event)`` returns the exchanges it finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from usbtrace.records import COMPLETE, SUBMIT, Event


@dataclass(slots=True)
class Exchange:
    """One request, submission and completion merged: a row of ``irps`` / ``urbs``."""

    seq: int
    irp_id: int
    position: str
    submit: Event | None
    complete: Event | None

    @property
    def first(self) -> Event:
        return self.submit or self.complete  # type: ignore[return-value]

    @property
    def is_urb(self) -> bool:
        return self.first.endpoint is not None

    @property
    def direction_in(self) -> bool:
        endpoint = self.first.endpoint
        if endpoint is None:
            return False
        setup = self.first.setup
        if endpoint & 0x7F == 0 and setup:
            return bool(setup[0] & 0x80)
        return bool(endpoint & 0x80)

    @property
    def submitted_at(self) -> float | None:
        return self.submit.ts if self.submit else None

    @property
    def completed_at(self) -> float | None:
        return self.complete.ts if self.complete else None

    @property
    def requested_length(self) -> int | None:
        return self.submit.length if self.submit else None

    @property
    def actual_length(self) -> int | None:
        return self.complete.length if self.complete else None

    @property
    def payload(self) -> Event | None:
        """The event that carries the payload: submission for OUT, completion for IN."""
        if self.direction_in:
            return self.complete
        return self.submit if self.submit is not None and self.submit.data else self.complete

    @property
    def data(self) -> bytes:
        event = self.payload
        return event.data if event is not None else b""

    @property
    def truncated(self) -> bool:
        """Fewer payload bytes captured than the transfer moved."""
        event = self.payload
        if event is None:
            return False
        expected = event.data_length
        if expected is None:
            expected = self.actual_length if self.direction_in else self.requested_length
        return expected is not None and len(event.data) < expected


class Pairer:
    def __init__(self) -> None:
        self._pending: dict[tuple[str, int, int | None], Exchange] = {}
        self._seq = 0

    def feed(self, event: Event) -> Exchange | None:
        key = (event.position, event.irp_id, event.endpoint)
        if event.kind == SUBMIT:
            self._seq += 1
            stale = self._pending.get(key)
            exchange = Exchange(self._seq, event.irp_id, event.position, event, None)
            self._pending[key] = exchange
            return stale  # a reused id whose completion never came: emit it as it is
        if event.kind == COMPLETE:
            exchange = self._pending.pop(key, None)  # type: ignore[assignment]
            if exchange is None:
                self._seq += 1
                return Exchange(self._seq, event.irp_id, event.position, None, event)
            exchange.complete = event
            return exchange
        return None

    def flush(self) -> list[Exchange]:
        """Submissions never completed, in submission order."""
        left = sorted(self._pending.values(), key=lambda x: x.seq)
        self._pending.clear()
        return left
