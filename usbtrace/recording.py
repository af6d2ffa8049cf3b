"""A recording session: stick, stack, tracer and database, wired together.

This is the one place that knows both the kernel model and the store; the
CLI and the pytest fixtures call it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from usbtrace.devices.base import DeviceBackend
from usbtrace.devices.faults import parse_faults
from usbtrace.devices.image import DiskImage, parse_size
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.errors import InputError
from usbtrace.machine import Machine
from usbtrace.store.database import Database, is_url
from usbtrace.store.writer import Recorder, SessionWriter, now_iso
from usbtrace.workloads import WRITING, WorkloadResult, get

logger = logging.getLogger(__name__)


@dataclass
class RecordOptions:
    db: str = "usbtrace.db"
    image: str | None = None
    size: str = "64M"
    workload: str = "raw"
    speed: str = "super"
    positions: tuple[str, ...] = ("lower", "upper")
    fs: str = "fat16"  # for the files workload
    copy: tuple[str, ...] = ()
    device: str | None = None  # usb:VID:PID[:SERIAL]: real hardware through pyusb
    usb_backend: str = "libusb"
    allow_write: bool = False
    lossy: bool = False
    queue: int = 64 << 20  # bytes of payload the tracer may queue
    faults: tuple[str, ...] = ()  # --fault specs for the simulated stick
    sleep: bool = False  # a sleep (S3) and resume cycle after the workload
    protocol: str = "bot"  # the simulated stick's transport: "bot", or "uas" (UASPStor loads)
    streams: bool = False  # with "uas": SuperSpeed bulk streams (the tag is the stream id)


@dataclass
class RecordSummary:
    session_id: int
    database: str
    commands: int
    records: int
    dropped: int
    bytes_written: int
    bytes_read: int
    bus_seconds: float
    wall_seconds: float
    workload: WorkloadResult
    notes: list[str] = field(default_factory=list)


def open_image(options: RecordOptions) -> DiskImage:
    size = parse_size(options.size)
    if options.image:
        return DiskImage.open(options.image, create_size=size)
    return DiskImage.in_memory(size)


def open_hardware(options: RecordOptions) -> DeviceBackend:
    from usbtrace.devices.hardware import HardwareDevice, find_device, get_usb_backend

    usb_options = {"size": options.size, "image": options.image, "speed": options.speed}
    backend = get_usb_backend(options.usb_backend, usb_options)
    assert options.device is not None
    return HardwareDevice(find_device(options.device, backend), allow_write=options.allow_write)


def record(options: RecordOptions, backend: DeviceBackend | None = None,
           source: str = "simulated") -> RecordSummary:
    """Bring the stack up on the stick, run the workload, tear down, store it all."""
    workload = get(options.workload)
    hardware = options.device is not None
    if hardware and options.workload in WRITING and not options.allow_write:
        raise InputError(f"the '{options.workload}' workload writes to the device; "
                         "pass --allow-write if nothing on it matters (see README: real "
                         "hardware)")
    if options.workload == "files":
        from usbtrace.workloads.files import check, simulated_size

        check(options.fs, options.copy,  # bad options fail before a session exists
              None if hardware else simulated_size(options.image, options.size))
    faults = parse_faults(options.faults, hardware)
    if (options.protocol != "bot" or options.streams) and (hardware or backend is not None):
        raise InputError("--protocol and --streams choose what the simulated stick speaks; "
                         "a real device speaks what it speaks")
    if options.streams and (options.protocol != "uas" or options.speed != "super"):
        raise InputError("--streams needs --protocol uas at --speed super (bulk streams are "
                         "a SuperSpeed feature)")
    if options.image and not is_url(options.db):
        from usbtrace.outputs import refuse_database

        refuse_database(options.image, Path(options.db), "--image")
    database = Database(options.db)
    own_backend = backend is None
    if backend is None:
        backend = open_hardware(options) if hardware else \
            SimulatedStick(open_image(options), speed=options.speed, protocol=options.protocol,
                           streams=options.streams)
    if isinstance(backend, SimulatedStick):
        for fault in faults:
            backend.inject(fault)
    if hardware:
        source = "hardware" if options.usb_backend == "libusb" else "pyusb-simulated"
        name = str(options.device)
    else:
        name = options.image or f"memory:{options.size}"
    clock = "wall" if hardware else "virtual"
    session_id = database.new_session(source, name, now_iso(), clock)
    logger.info("recording session %d: workload '%s' on %s", session_id, options.workload, name)
    recorder = Recorder(SessionWriter(database, session_id), capacity=options.queue,
                        lossy=options.lossy)
    t0 = time.perf_counter()
    machine = Machine(backend, sink=recorder, positions=options.positions, clock=clock)
    failure: str | None = None
    state = "interrupted"  # unless the workload ends, one way or the other
    try:
        machine.start()
        if options.workload == "files":
            result = workload(machine, fat=options.fs, copy=options.copy)
        else:
            result = workload(machine)
        if options.sleep:
            slept = machine.sleep()
            result.notes.append("the machine slept (S3) and resumed after the workload"
                                if slept else "a driver refused to let the machine sleep")
        state = "complete" if result.ok else "failed"
        if not result.ok:
            failure = "the data check failed: " + "; ".join(result.mismatches[:3])
    except Exception as e:  # kept in the session's notes: the log up to here stays
        state, failure = "failed", f"the workload failed: {type(e).__name__}: {e}"
        raise
    finally:
        try:
            if state != "interrupted":
                machine.stop()
        finally:
            bus_seconds = machine.scheduler.now()
            injected = "faults injected: " + ", ".join(map(str, faults)) if faults else None
            recorder.close(notes="; ".join(n for n in (injected, failure) if n) or None,
                           state=state)
            if own_backend:
                backend.close()
            database.close()
    wall = time.perf_counter() - t0
    writer = recorder.writer
    summary = RecordSummary(session_id, database.display, writer.commands, writer.records,
                            recorder.dropped, result.bytes_written, result.bytes_read,
                            bus_seconds, wall, result)
    return summary
