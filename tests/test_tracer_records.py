"""The tracer writes flat records, (fields in Event's order, payload); the consumer
makes the Events.  Whatever a sink takes, the log is the same."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import (
    RECORD_FIELDS,
    Event,
    Record,
    RecordSink,
    event_from_record,
    record_from_event,
)


class Keep(RecordSink):
    def __init__(self) -> None:
        self.records: list[Record] = []

    def take(self, record: Record) -> None:
        self.records.append(record)


def _workload(sink: object) -> None:
    machine = Machine(SimulatedStick(DiskImage.in_memory(4 << 20)), sink=sink).start()
    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)
    win32.WriteFile(handle, bytes(range(256)) * 64, 65536)
    win32.ReadFile(handle, bytearray(16384), 65536)
    machine.stop()


def test_a_record_sink_and_an_event_sink_see_the_same_log() -> None:
    keep, events = Keep(), []
    _workload(keep)
    _workload(events.append)
    assert len(keep.records) == len(events) > 20
    # file objects are numbered for the process, not the machine: the second run's differ
    assert [replace(event_from_record(r), file_object=None) for r in keep.records] == \
        [replace(e, file_object=None) for e in events]
    for fields, payload in keep.records:
        assert len(fields) == len(RECORD_FIELDS) and type(payload) is bytes
    # the payloads are copies the filter made, in the records that carry data
    assert any(len(p) == 16384 for _, p in keep.records)
    assert any(e.data == bytes(range(256)) * 64 for e in events)


def test_an_event_survives_the_round_trip_through_a_record() -> None:
    event = Event("C", 1.5, 7, "lower", 15, 1, 0x220003, 3, 0xC0000001, 512, "x", 9, 1, 2,
                  0x81, 2, 4, 512, b"\x80\x06\0\1\0\0\x12\0", b"\xaa" * 9, 600, 4096, 11, 5,
                  -32, 3)
    fields, payload = record_from_event(event)
    assert payload == event.data and "data" not in RECORD_FIELDS
    assert event_from_record((fields, payload)) == event


def test_a_record_carries_the_clock_counter_and_its_event_the_seconds() -> None:
    """The filter stamps the scheduler's counter (ns), as a kernel filter stamps
    KeQueryPerformanceCounter; the Event made from the record has seconds, exactly
    what the clock's own ``now()`` gives for the same counter."""
    keep = Keep()
    _workload(keep)
    stamps = [fields[1] for fields, _ in keep.records]
    assert all(type(t) is int for t in stamps) and stamps == sorted(stamps)
    assert stamps[-1] > 0  # the virtual clock moved while the commands ran
    for record in keep.records:
        assert event_from_record(record).ts == record[0][1] / 1e9


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**15))  # up to 11 days, in ns
def test_a_time_in_seconds_goes_to_the_counter_and_back_unchanged(ns: int) -> None:
    event = Event("S", ns / 1e9, 1)
    fields, _ = record_from_event(event)
    assert fields[1] == ns
    assert event_from_record((fields, b"")).ts == event.ts


def test_on_the_wall_clock_records_carry_nanoseconds_since_the_start() -> None:
    """Real hardware runs on the wall clock: the counter is monotonic ns from the
    scheduler's start, and the Events' seconds lie within the time the run took."""
    keep = Keep()
    started = time.monotonic()
    machine = Machine(SimulatedStick(DiskImage.in_memory(4 << 20)), sink=keep,
                      clock="wall").start()
    win32 = machine.win32
    win32.ReadFile(win32.CreateFile(DISK_PATH), bytearray(4096), 0)
    machine.stop()
    took = time.monotonic() - started
    stamps = [fields[1] for fields, _ in keep.records]
    assert stamps and all(type(t) is int for t in stamps) and stamps == sorted(stamps)
    assert 0 < event_from_record(keep.records[-1]).ts <= took


def test_the_data_paths_records_are_the_ones_the_general_path_makes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch and completion routines build a bulk URB's record themselves; sent
    through ``_describe`` (which they bypass) every record, payload too, is the same."""
    from usbtrace.drivers import tracer

    fast = Keep()
    _workload(fast)
    monkeypatch.setattr(tracer, "UrbBulkOrInterruptTransfer", type("NotAnUrb", (), {}))
    general = Keep()
    _workload(general)
    assert len(fast.records) == len(general.records) > 20
    assert sum(1 for fields, _ in fast.records if fields[14] is not None) > 10  # endpoints
    strip = [(fields[:21] + fields[22:], payload) for fields, payload in fast.records]
    assert strip == [(fields[:21] + fields[22:], payload)
                     for fields, payload in general.records]  # file objects apart


def test_a_payload_stays_what_the_transfer_moved_when_the_caller_reuses_its_buffer() -> None:
    """The IN data is copied at completion: the caller's buffer is read into again
    before anyone consumes the record (a queue may hold it), and the record must not
    follow it."""
    keep = Keep()
    machine = Machine(SimulatedStick(DiskImage.in_memory(4 << 20)), sink=keep).start()
    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)
    first, second = bytes(range(256)) * 16, bytes(reversed(range(256))) * 16
    win32.WriteFile(handle, first + second, 0)
    buffer = bytearray(4096)
    win32.ReadFile(handle, buffer, 0)
    win32.ReadFile(handle, buffer, 4096)
    machine.stop()
    assert buffer == second
    ins = [payload for fields, payload in keep.records
           if fields[0] == "C" and fields[14] == 0x81 and len(payload) == 4096]
    assert ins[-2:] == [first, second]
