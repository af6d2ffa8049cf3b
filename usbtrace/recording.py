"""A recording session: stick, stack, tracer and database, wired together.

This is the one place that knows both the kernel model and the store; the
CLI and the pytest fixtures call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from usbtrace.devices.base import DeviceBackend
from usbtrace.devices.faults import Fault, parse_faults
from usbtrace.devices.image import DiskImage, parse_size
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.errors import InputError
from usbtrace.machine import Machine
from usbtrace.store.database import Database
from usbtrace.store.writer import Recorder, SessionWriter, now_iso
from usbtrace.workloads import WRITING, WorkloadResult, get


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


def _amend_session(database: Database, session_id: int, failed: bool,
                   faults: list[Fault]) -> None:
    """A failed run's session is not complete, though the writer closed it cleanly; a
    session with injected faults says so, lest its log be taken for the device's own."""
    if not failed and not faults:
        return
    from sqlalchemy import select, update

    from usbtrace.store.schema import SessionRow

    with database.engine.begin() as conn:
        values: dict[str, object] = {}
        if failed:
            values["complete"] = False
        if faults:
            notes = conn.execute(select(SessionRow.notes).where(SessionRow.id == session_id)
                                 ).scalar()
            injected = "faults injected: " + ", ".join(map(str, faults))
            values["notes"] = "; ".join(n for n in (injected, notes) if n)
        conn.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))


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
    database = Database(options.db)
    own_backend = backend is None
    if backend is None:
        backend = open_hardware(options) if hardware else \
            SimulatedStick(open_image(options), speed=options.speed)
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
    recorder = Recorder(SessionWriter(database, session_id), capacity=options.queue,
                        lossy=options.lossy)
    t0 = time.perf_counter()
    machine = Machine(backend, sink=recorder, positions=options.positions, clock=clock)
    failure: str | None = None
    try:
        machine.start()
        if options.workload == "files":
            result = workload(machine, fat=options.fs, copy=options.copy)
        else:
            result = workload(machine)
    except Exception as e:  # kept in the session's notes: the log up to here stays
        failure = f"the workload failed: {type(e).__name__}: {e}"
        raise
    finally:
        try:
            machine.stop()
        finally:
            bus_seconds = machine.scheduler.now()
            recorder.close(notes=failure)
            _amend_session(database, session_id, failure is not None, faults)
            if own_backend:
                backend.close()
    wall = time.perf_counter() - t0
    writer = recorder.writer
    summary = RecordSummary(session_id, database.display, writer.commands, writer.records,
                            recorder.dropped, result.bytes_written, result.bytes_read,
                            bus_seconds, wall, result)
    database.close()
    return summary
