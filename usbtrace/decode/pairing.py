"""Stage 1: pair each submission with its completion into one exchange.

The key is the filter position, the IRP id (USBPcap: the IRP address;
usbmon: the URB id), the endpoint and the device (bus and address): QEMU's
usbmon-format recordings give every control URB the id 0, and the endpoint still
tells their transfers apart; two devices' URBs never pair with each other, even
with the same id (QEMU recordings of two devices merged, two hosts' captures).  An
IRP that passes a filter several times in a row — the SRB IRP that usbstor
re-sends for CBW, data and CSW — pairs once per pass, since a pass completes
before the next begins.  A completion without a
submission (a capture that started mid-transfer) still yields an exchange,
with no submission time; submissions never completed are flushed at the end.

Later stages must see each transfer where its meaning is in the capture, not
where its pair happens to close: a bulk OUT transfer's bytes (a CBW, data
written) ride on its submission, an IN transfer's on its completion.  A
capture of only the records that carry data (Wireshark's export of a filter
such as ``usb.data_len>0``, some USBPcap versions) has no OUT completions at
all, so waiting for one would move every CBW after the data and CSW that
follow it.  So a bulk OUT submission with data is handed on at once, unsealed
(``(x, False)``), and handed on again sealed (``(x, True)``) when its
completion comes, its id is reused, the pending limit evicts it, or at the
end; every other exchange is handed on once, sealed.

Memory is bounded: at most ``limit`` exchanges and ``limit_bytes`` of their
payload wait for a completion; past that the oldest is sealed as it is (a
capture whose completions never come, or an endpoint that never answers).

Sans-I/O: ``feed(event)`` returns ``(exchange, sealed)`` steps in capture order.
"""

from __future__ import annotations

from usbtrace.records import BULK, COMPLETE, SUBMIT, Event

PENDING_LIMIT = 4096  # exchanges waiting for a completion, at most ...
PENDING_BYTES = 32 << 20  # ... and at most this much of their payload

Step = tuple["Exchange", bool]  # an exchange, and whether both halves are in (sealed)
Key = tuple[str, int, "int | None", "int | None", "int | None"]  # see the module's doc


class Exchange:
    """One request, submission and completion merged: a row of ``irps`` / ``urbs``.

    Everything a later stage asks is computed once, when the pair is sealed.
    """

    __slots__ = ("seq", "irp_id", "position", "submit", "complete", "first", "is_urb",
                 "direction_in", "submitted_at", "completed_at", "requested_length",
                 "actual_length", "data", "truncated", "early")

    def __init__(self, seq: int, irp_id: int, position: str, submit: Event | None,
                 complete: Event | None) -> None:
        self.seq = seq
        self.irp_id = irp_id
        self.position = position
        self.submit = submit
        self.complete = complete
        self.early = False  # handed on at its submission, before its completion

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
    def __init__(self, limit: int = PENDING_LIMIT, limit_bytes: int = PENDING_BYTES) -> None:
        self._pending: dict[Key, Exchange] = {}
        self._pending_bytes = 0
        self._limit = max(1, limit)
        self._limit_bytes = limit_bytes
        self._seq = 0
        self.evicted = 0  # submissions sealed uncompleted because too many waited

    def feed(self, event: Event) -> list[Step]:
        kind = event.kind
        if kind == COMPLETE:
            return [(self.complete(event), True)]
        if kind == SUBMIT:
            # half the records of a capture: the lookups are made once
            irp_id, position, endpoint, data = \
                event.irp_id, event.position, event.endpoint, event.data
            key = (position, irp_id, endpoint, event.bus, event.device)
            pending = self._pending
            self._seq += 1
            out: list[Step] = []
            stale = pending.pop(key, None)
            if stale is not None:  # a reused id whose completion never came
                if stale.submit is not None:
                    self._pending_bytes -= len(stale.submit.data)
                out.append((stale.seal(), True))
            exchange = Exchange(self._seq, irp_id, position, event, None)
            pending[key] = exchange
            self._pending_bytes += len(data)
            if data and event.transfer_type == BULK and endpoint is not None \
                    and not endpoint & 0x80:
                exchange.early = True
                out.append((exchange.seal(), False))
            while len(pending) > self._limit or \
                    (self._pending_bytes > self._limit_bytes and len(pending) > 1):
                oldest = self._take(next(iter(pending)))
                assert oldest is not None
                self.evicted += 1
                out.append((oldest.seal(), True))
            return out
        return []

    def complete(self, event: Event) -> Exchange:
        """``feed`` for a completion, which always makes exactly one sealed exchange:
        that exchange, with no list around it (half the records of a capture)."""
        pending = self._pending.pop((event.position, event.irp_id, event.endpoint, event.bus,
                                     event.device), None)
        if pending is None:
            self._seq += 1
            return Exchange(self._seq, event.irp_id, event.position, None, event).seal()
        if pending.submit is not None:
            self._pending_bytes -= len(pending.submit.data)
        pending.complete = event
        return pending.seal()

    def _take(self, key: Key) -> Exchange | None:
        exchange = self._pending.pop(key, None)
        if exchange is not None and exchange.submit is not None:
            self._pending_bytes -= len(exchange.submit.data)
        return exchange

    @property
    def next_seq(self) -> int:
        """The number the next exchange will get."""
        return self._seq + 1

    def flush(self) -> list[Exchange]:
        """Submissions never completed, in submission order."""
        left = sorted(self._pending.values(), key=lambda x: x.seq)
        self._pending.clear()
        self._pending_bytes = 0
        return [x.seal() for x in left]
