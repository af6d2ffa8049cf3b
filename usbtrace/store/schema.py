"""The database users query: SQLAlchemy 2 models, one table per kind of row.

Public names (documented in ``schemas/usbtrace.sql``, generated from these
models and tested to match):

* ``sessions``: one per recording or imported capture;
* ``irps``: every IRP pass through a tracer position, submission and
  completion merged (live sessions only);
* ``urbs``: every USB transfer, with setup bytes and payload;
* ``scsi_commands``: every Bulk-Only command: CBW, data and CSW joined;
* ``devices``: what descriptors said about each device.

Views for the joins users write most (``VIEWS``, created with the tables):

* ``command_data``: a Bulk-Only command with each of its data URBs;
* ``io_chain``: an upper READ/WRITE with its SRB IRPs and their URBs;
* ``file_activity_commands``: file activity with the command that moved it.

IRP ids are text (``0xffffa00000002900``): kernel addresses and usbmon URB
ids do not fit a signed 64-bit integer.  ``irps.seq`` and ``urbs.seq`` share one
numbering within a session, so an URB joins its IRP pass on (session_id, seq),
and a READ joins its SRBs and their URBs through ``parent_irp_id``.
Timestamps are seconds from the session start; names are lower-case.  Byte
offsets, LBAs, tags and lengths are 64-bit (BIGINT): a 32-bit LBA or tag does
not fit PostgreSQL's signed INTEGER.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from usbtrace.store.sqlite_read import SCHEMA_VERSION  # noqa: F401 (kept where it was)

# A session's life: ``running`` while a process writes it; then ``complete``,
# ``interrupted`` (Ctrl-C, or its writer died: counts are true as of the last
# stored batch) or ``failed`` (an error ended it; ``notes`` says which).
SESSION_STATES = ("running", "complete", "interrupted", "failed")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "usbtrace_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(32))  # simulated, hardware, usbmon, usbpcap
    source_name: Mapped[str] = mapped_column(Text)
    started_at: Mapped[str] = mapped_column(String(40))  # ISO 8601, UTC
    record_count: Mapped[int] = mapped_column(Integer, default=0)
    dropped_count: Mapped[int] = mapped_column(Integer, default=0)
    malformed_count: Mapped[int] = mapped_column(Integer, default=0)
    command_count: Mapped[int] = mapped_column(Integer, default=0)
    duration: Mapped[float | None] = mapped_column(Float)
    time_origin: Mapped[float | None] = mapped_column(Float)  # epoch seconds of t=0 (captures)
    clock: Mapped[str] = mapped_column(String(16), default="virtual")  # virtual, wall, capture
    linktype: Mapped[int | None] = mapped_column(Integer)
    file_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(12), default="running")  # SESSION_STATES
    notes: Mapped[str | None] = mapped_column(Text)
    # who writes a running session: a reader tells a live writer from a dead one
    writer_host: Mapped[str | None] = mapped_column(String(255))
    writer_pid: Mapped[int | None] = mapped_column(Integer)
    # what made the session: the usbtrace release and the command line (shell-quoted),
    # so a recording can be made again the same way
    usbtrace_version: Mapped[str | None] = mapped_column(String(40))
    command_line: Mapped[str | None] = mapped_column(Text)


class IrpRow(Base):
    __tablename__ = "irps"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    irp_id: Mapped[str] = mapped_column(String(20))
    parent_irp_id: Mapped[str | None] = mapped_column(String(20))
    position: Mapped[str] = mapped_column(String(8))  # lower, upper
    major: Mapped[str] = mapped_column(String(32))
    minor: Mapped[str | None] = mapped_column(String(40))
    ioctl: Mapped[str | None] = mapped_column(String(48))
    status: Mapped[str | None] = mapped_column(String(48))
    information: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str | None] = mapped_column(Text)
    offset: Mapped[int | None] = mapped_column(BigInteger)
    length: Mapped[int | None] = mapped_column(BigInteger)
    file_object: Mapped[int | None] = mapped_column(Integer)
    submitted_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_irps_irp", "session_id", "irp_id"),
                      Index("ix_irps_parent", "session_id", "parent_irp_id"))


class UrbRow(Base):
    __tablename__ = "urbs"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    irp_id: Mapped[str] = mapped_column(String(20))
    record_number: Mapped[int | None] = mapped_column(Integer)  # in the capture file
    submitted_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)
    bus: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[int] = mapped_column(Integer)  # with the direction bit
    transfer_type: Mapped[str] = mapped_column(String(12))
    direction: Mapped[str] = mapped_column(String(3))  # in, out
    urb_function: Mapped[str | None] = mapped_column(String(48))
    status: Mapped[str | None] = mapped_column(String(48))
    requested_length: Mapped[int | None] = mapped_column(BigInteger)
    actual_length: Mapped[int | None] = mapped_column(BigInteger)
    captured_length: Mapped[int] = mapped_column(BigInteger)
    truncated: Mapped[bool] = mapped_column(Boolean)
    setup: Mapped[bytes | None] = mapped_column(LargeBinary)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    stream_id: Mapped[int | None] = mapped_column(Integer)  # USB 3 bulk stream; live only

    __table_args__ = (Index("ix_urbs_irp", "session_id", "irp_id"),)


class ScsiCommandRow(Base):
    __tablename__ = "scsi_commands"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    bus: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[int | None] = mapped_column(Integer)
    lun: Mapped[int] = mapped_column(Integer)
    tag: Mapped[int] = mapped_column(BigInteger)
    opcode: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))
    cdb: Mapped[bytes] = mapped_column(LargeBinary)
    lba: Mapped[int | None] = mapped_column(BigInteger)
    blocks: Mapped[int | None] = mapped_column(BigInteger)
    data_direction: Mapped[str] = mapped_column(String(4))  # in, out, none
    expected_length: Mapped[int] = mapped_column(BigInteger)
    data_length: Mapped[int] = mapped_column(BigInteger)  # bytes the data phase moved
    data_truncated: Mapped[bool] = mapped_column(Boolean)
    residue: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # good, check_condition, phase_error, missing
    sense_key: Mapped[str | None] = mapped_column(String(24))
    asc: Mapped[int | None] = mapped_column(Integer)
    ascq: Mapped[int | None] = mapped_column(Integer)
    irp_id: Mapped[str] = mapped_column(String(20))
    cbw_seq: Mapped[int] = mapped_column(Integer)  # urbs.seq of the CBW
    csw_seq: Mapped[int | None] = mapped_column(Integer)
    submitted_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)

    # the order commands were sent in: one timeline across devices and LUNs
    __table_args__ = (Index("ix_scsi_commands_cbw", "session_id", "cbw_seq"),)


class DeviceRow(Base):
    __tablename__ = "devices"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    bus: Mapped[int] = mapped_column(Integer, primary_key=True)
    device: Mapped[int] = mapped_column(Integer, primary_key=True)
    vid: Mapped[int | None] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    device_class: Mapped[int | None] = mapped_column(Integer)
    manufacturer: Mapped[str | None] = mapped_column(Text)
    product: Mapped[str | None] = mapped_column(Text)
    serial: Mapped[str | None] = mapped_column(Text)
    mass_storage_interfaces: Mapped[str | None] = mapped_column(Text)  # e.g. "0" or "1,2"


class FileActivityRow(Base):
    """Which file each block of a READ or WRITE belongs to, and file events."""

    __tablename__ = "file_activity"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scsi_seq: Mapped[int] = mapped_column(Integer)  # scsi_commands.seq
    path: Mapped[str | None] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(String(12))  # read, write, created, deleted, ...
    kind: Mapped[str] = mapped_column(String(20))  # data, directory, fat, boot_sector, ...
    file_offset: Mapped[int | None] = mapped_column(BigInteger)
    length: Mapped[int | None] = mapped_column(BigInteger)
    lba: Mapped[int | None] = mapped_column(BigInteger)
    command_offset: Mapped[int | None] = mapped_column(BigInteger)  # into the command's data
    detail: Mapped[str | None] = mapped_column(Text)

    # A row is inserted into every index of the table, at about one row per READ or
    # WRITE of an import: only rows with a path are indexed by path (most rows are
    # metadata: FAT, boot sector, unknown, ...).  A query on a path (``path = ...``,
    # ``GLOB``, ``IS NOT NULL``) uses the index all the same.  Databases made before
    # keep their full index: the same answers.  (WITHOUT ROWID, which would spare the
    # key's own index, makes SQLite's planner look a command's rows up by the key's
    # session_id instead of ix_file_activity_command: quadratic.)
    __table_args__ = (Index("ix_file_activity_path", "session_id", "path",
                            sqlite_where=text("path IS NOT NULL"),
                            postgresql_where=text("path IS NOT NULL")),
                      Index("ix_file_activity_command", "session_id", "scsi_seq"))


class GapRow(Base):
    """Where a lossy recording dropped records: nothing between ``seq - 1`` and
    ``seq`` is known, and no command is decoded across the gap."""

    __tablename__ = "gaps"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # first seq after the gap
    at: Mapped[float | None] = mapped_column(Float)  # time of the first record after it
    dropped: Mapped[int] = mapped_column(Integer)  # records lost in it


PUBLIC_TABLES = ("sessions", "irps", "urbs", "scsi_commands", "devices", "file_activity",
                 "gaps")


# name -> (what it is, its SELECT).  Portable SQL (SQLite and PostgreSQL); created after
# the tables by ``create_all`` and by the upgrade, rendered into ``schemas/usbtrace.sql``.
VIEWS: dict[str, tuple[str, str]] = {
    "command_data": (
        "A SCSI command with each of its data URBs (Bulk-Only: the bulk URBs of its device "
        "in the data direction between its CBW and CSW); a command without data has one "
        "row with the URB columns NULL.",
        """SELECT c.session_id, c.seq AS command_seq, c.bus, c.device, c.lun, c.tag,
       c.name AS command, c.lba, c.blocks, c.data_direction, c.data_length,
       c.status AS command_status, c.submitted_at, c.completed_at,
       u.seq AS urb_seq, u.endpoint, u.status AS urb_status,
       u.requested_length, u.actual_length, u.captured_length, u.truncated, u.data
FROM scsi_commands c
LEFT JOIN urbs u ON u.session_id = c.session_id
 AND u.seq > c.cbw_seq AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000)
 AND u.bus IS NOT DISTINCT FROM c.bus AND u.device IS NOT DISTINCT FROM c.device
 AND u.transfer_type = 'bulk' AND u.direction = c.data_direction"""),
    "io_chain": (
        "An upper READ or WRITE (above disk) with each pass of its SRB IRPs through the "
        "lower position and the URB of that pass: one row per URB.",
        """SELECT r.session_id, r.seq AS request_seq, r.irp_id AS request_irp, r.major,
       r.offset, r.length, r.status AS request_status,
       r.submitted_at AS request_submitted_at, r.completed_at AS request_completed_at,
       s.seq AS srb_seq, s.irp_id AS srb_irp, s.status AS srb_status,
       u.seq AS urb_seq, u.bus, u.device, u.endpoint, u.transfer_type, u.direction,
       u.actual_length, u.status AS urb_status
FROM irps r
JOIN irps s ON s.session_id = r.session_id AND s.parent_irp_id = r.irp_id
 AND s.position = 'lower' AND s.seq > r.seq
 AND NOT EXISTS (SELECT 1 FROM irps r2 WHERE r2.session_id = r.session_id
                 AND r2.irp_id = r.irp_id AND r2.position = 'upper'
                 AND r2.seq > r.seq AND r2.seq < s.seq)
JOIN urbs u ON u.session_id = s.session_id AND u.seq = s.seq
WHERE r.position = 'upper' AND r.major IN ('read', 'write')"""),
    "file_activity_commands": (
        "File activity (file data, metadata, file events) with the SCSI command whose "
        "blocks it was.",
        """SELECT f.session_id, f.id AS activity_id, f.path, f.operation, f.kind,
       f.file_offset, f.length, f.lba AS activity_lba, f.command_offset, f.detail,
       c.seq AS command_seq, c.bus, c.device, c.lun, c.name AS command, c.lba, c.blocks,
       c.status AS command_status, c.submitted_at, c.completed_at
FROM file_activity f
JOIN scsi_commands c ON c.session_id = f.session_id AND c.seq = f.scsi_seq"""),
}


def create_view_sql(name: str) -> str:
    return f"CREATE VIEW {name} AS\n{VIEWS[name][1]}"


def _create_views(target: object, connection: Any, **kw: Any) -> None:
    for name in VIEWS:
        connection.execute(text(create_view_sql(name)))


event.listen(Base.metadata, "after_create", _create_views)
