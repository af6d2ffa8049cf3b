"""The tracer writes flat records, (fields in Event's order, payload); the consumer
makes the Events.  Whatever a sink takes, the log is the same."""

from __future__ import annotations

import time
from dataclasses import replace

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
