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

from usbtrace.records import COMPLETE, SUBMIT, Event


class Exchange:
    """One request, submission and completion merged: a row of ``irps`` / ``urbs``.

    Everything a later stage asks is computed once, when the pair is sealed.
    """

    __slots__ = ("seq", "irp_id", "position", "submit", "complete", "first", "is_urb",
                 "direction_in", "submitted_at", "completed_at", "requested_length",
                 "actual_length", "data", "truncated")

    def __init__(self, seq: int, irp_id: int, position: str, submit: Event | None,
                 complete: Event | None) -> None:
        self.seq = seq
        self.irp_id = irp_id
        self.position = position
        self.submit = submit
        self.complete = complete

    def seal(self) -> Exchange:
        submit, complete = self.submit, self.complete
        first = submit or complete
        assert first is not None
        self.first = first
        endpoint = first.endpoint
        self.is_urb = endpoint is not None
        if endpoint is None:
            direction_in = False
        elif endpoint & 0x7F == 0 and first.setup:
            direction_in = bool(first.setup[0] & 0x80)
        else:
            direction_in = bool(endpoint & 0x80)
        self.direction_in = direction_in
        self.submitted_at = submit.ts if submit is not None else None
        self.completed_at = complete.ts if complete is not None else None
        self.requested_length = submit.length if submit is not None else None
        self.actual_length = complete.length if complete is not None else None
        # the payload rides on the submission for OUT, on the completion for IN
        if direction_in:
            payload = complete
        else:
            payload = submit if submit is not None and submit.data else complete
        if payload is None:
            self.data = b""
            self.truncated = False
        else:
            data = payload.data
            self.data = data
            expected = payload.data_length
            if expected is None:
                expected = self.actual_length if direction_in else self.requested_length
            self.truncated = expected is not None and len(data) < expected
        return self


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
            # a reused id whose completion never came: emit it as it is
            return stale.seal() if stale is not None else None
        if event.kind == COMPLETE:
            pending = self._pending.pop(key, None)
            if pending is None:
                self._seq += 1
                return Exchange(self._seq, event.irp_id, event.position, None, event).seal()
            pending.complete = event
            return pending.seal()
        return None

    @property
    def next_seq(self) -> int:
        """The number the next exchange will get."""
        return self._seq + 1

    def flush(self) -> list[Exchange]:
        """Submissions never completed, in submission order."""
        left = sorted(self._pending.values(), key=lambda x: x.seq)
        self._pending.clear()
        return [x.seal() for x in left]
