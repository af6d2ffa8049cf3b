"""Capture file -> Events, whatever the container and the linktype.

``LINKTYPES`` maps a linktype to the decoder of its records.  A record that
cannot be decoded is counted with its record number and skipped; it never
stops the rest of the file.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from usbtrace.capture import darwin, usbmon, usbpcap
from usbtrace.capture.pcap import (
    BT_EPB,
    MAX_RECORD,
    MAX_TIMESTAMP,
    CaptureReader,
    InterfaceDrops,
    Listed,
    Packet,
    SourceError,
)
from usbtrace.errors import CaptureFormatError
from usbtrace.records import BULK, COMPLETE, CONTROL, GAP, ISOCHRONOUS, SUBMIT, Event
from usbtrace.usb import urb as U

LINKTYPE_NAMES = {
    usbmon.LINKTYPE_USB_LINUX: "usbmon",
    usbmon.LINKTYPE_USB_LINUX_MMAPPED: "usbmon",
    usbpcap.LINKTYPE_USBPCAP: "usbpcap",
    darwin.LINKTYPE_USB_DARWIN: "macos",
}
# whether classic pcap files of usbmon records take their own loop (``_events``); off,
# every record takes the general one (tests compare the two)
USBMON_PCAP_LOOP = True
# an Enhanced Packet Block's head and the usbmon header after it, by big-endian; and
# usbmon's count of isochronous descriptors (mmapped header)
EPB_USBMON = {big: struct.Struct(("<", ">")[big] + "IIIIIII" + usbmon.HEADER_LE.format[1:])
              .unpack_from for big in (False, True)}
# the same with USBPcap's header (always little-endian: USBPcap is Windows')
EPB_USBPCAP = struct.Struct("<IIIIIII" + usbpcap.HEADER.format[1:]).unpack_from
NDESC = {big: struct.Struct(("<", ">")[big] + "I").unpack_from for big in (False, True)}
OTHER_LINKTYPES = {1: "Ethernet", 101: "raw IP", 113: "Linux cooked", 127: "802.11 radiotap",
                   186: "USB (FreeBSD)", 188: "USB full/low speed (Ellisys)",
                   288: "USB 2.0 packets", 293: "USB 2.0 low speed"}


@dataclass
class CaptureStats:
    records: int = 0
    events: int = 0
    malformed: Listed = field(default_factory=Listed)  # its ``total`` counts all of them
    first_ts: float | None = None
    linktype: int | None = None
    skipped: int = 0  # records of interfaces that are not USB
    folded: int = 0  # USBPcap control-stage records merged into their transfer's events
    appended: int = 0  # pcap files joined after the first (cat, multi-member gzip)
    untimed: int = 0  # Simple Packet Blocks: no time of their own
    sections: int = 1  # pcapng sections read
    # records whose time is earlier than the record before them: how many, the first
    # one's number, and the largest step back (seconds)
    backwards: int = 0
    backwards_first: int = 0
    backwards_most: float = 0.0
    # bus/address pairs whose records came through several interfaces of one section
    shared: list[SharedAddresses] = field(default_factory=list)
    shared_unlisted: int = 0  # more of them, past what is kept
    other_linktypes: set[int] = field(default_factory=set)
    # what each interface of a pcapng says it lost, as the reader learns it (so a stop
    # midway keeps what was said so far); empty for pcap, which cannot say
    interface_drops: dict[tuple[int, int], InterfaceDrops] = field(default_factory=dict)

    def went_back(self, number: int, step: float) -> None:
        """Record ``number`` is ``step`` seconds earlier than the record before it."""
        if not self.backwards:
            self.backwards_first = number
        self.backwards += 1
        self.backwards_most = max(self.backwards_most, step)

    @property
    def drops(self) -> list[InterfaceDrops]:
        """The USB interfaces' only: another interface's losses are not this session's."""
        return [d for d in self.interface_drops.values() if d.linktype in LINKTYPE_NAMES]

    @property
    def dropped(self) -> int:
        return sum(d.dropped() for d in self.drops)

    def drop_note(self) -> str | None:
        """Where ``dropped`` comes from, and what it means for the decode."""
        parts = []
        stated = [d for d in self.drops if d.statistics and d.statistics_dropped()]
        if stated:
            ifdrop = sum(d.ifdrop or 0 for d in stated)
            osdrop = sum(d.statistics_dropped() - (d.ifdrop or 0) for d in stated)
            how = ", ".join(f"{n} by the {who}" for n, who in ((ifdrop, "interface"),
                                                              (osdrop, "operating system"))
                            if n)
            total = sum(d.statistics_dropped() for d in stated)
            parts.append(f"the capture's interface statistics say {total} packets were "
                         f"dropped ({how}); they do not say where, so commands "
                         "around the loss may be decoded incompletely or wrongly")
        located = sum(d.before_packets for d in self.drops)
        if located:
            places = [n for d in self.drops for n, _ in d.located]
            listed = ", ".join(map(str, places[:20])) + (", ..." if len(places) > 20 else "")
            parts.append(f"the capture's packet blocks say {located} packets were lost before "
                         f"records {listed} (gaps there)")
        return "; ".join(parts) or None


@dataclass(frozen=True)
class SharedAddresses:
    """Devices (bus, address) whose records came through more than one interface of
    one pcapng section: ``interfaces`` (ids in the section) and their if_names."""

    section: int
    devices: tuple[tuple[int, int], ...]
    interfaces: tuple[int, ...]
    names: tuple[str | None, ...]


class AddressSharing:
    """Which interfaces of a pcapng section each bus/address pair comes through.

    Events carry no interface (``records.Event``), so every later stage keys a device
    on its bus and address alone: two hosts' captures merged with ``mergecap -I none``,
    or usbmon0 captured beside usbmon1 (the same traffic twice), decode as one device.
    This finds where that happened, so the session can say so.  Sections alone never
    count: ring-buffer files joined with ``cat`` continue the same devices in each.
    Only sections that describe several interfaces are followed, and at most
    ``LIMIT`` pairs of one: memory stays bounded whatever the file."""

    LIMIT = 4096

    def __init__(self, names: dict[tuple[int, int], str]) -> None:
        self.names = names  # if_name by (section, interface), as the reader learns them
        self.section = 0
        self._seen: dict[tuple[int, int], set[int]] = {}
        self.found: list[SharedAddresses] = []
        self.unlisted = 0  # groups past LIMIT: counted, not kept

    def see(self, section: int, interface: int, events: list[Event]) -> None:
        if section != self.section:
            self.close()
            self.section = section
        seen = self._seen
        for event in events:
            key = (event.bus or 0, event.device or 0)
            interfaces = seen.get(key)
            if interfaces is not None:
                interfaces.add(interface)
            elif len(seen) < self.LIMIT:
                seen[key] = {interface}

    def close(self) -> list[SharedAddresses]:
        """The section's pairs that came through several interfaces, grouped by the
        interfaces they came through; the section's record is then cleared."""
        groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for key, interfaces in self._seen.items():
            if len(interfaces) > 1:
                groups.setdefault(tuple(sorted(interfaces)), []).append(key)
        for through, devices in groups.items():
            if len(self.found) >= self.LIMIT:  # a file of many such sections
                self.unlisted += 1
                continue
            self.found.append(SharedAddresses(
                self.section, tuple(sorted(devices)), through,
                tuple(self.names.get((self.section, i)) for i in through)))
        self._seen = {}
        return self.found


class Decoder:
    """Route each packet to the decoder of its linktype (``self.decoders``)."""

    def __init__(self, stats: CaptureStats) -> None:
        self.stats = stats
        self.usbpcap = usbpcap.UsbpcapDecoder()
        self.decoders: dict[int, Callable[[Packet], list[Event]]] = {
            usbmon.LINKTYPE_USB_LINUX: lambda packet: [usbmon.decode(packet)],
            usbmon.LINKTYPE_USB_LINUX_MMAPPED: lambda packet: [usbmon.decode(packet)],
            usbpcap.LINKTYPE_USBPCAP: self.usbpcap.decode,
            darwin.LINKTYPE_USB_DARWIN: lambda packet: [darwin.decode(packet)],
        }

    def decode(self, packet: Packet) -> list[Event]:
        decoder = self.decoders.get(packet.linktype)
        if decoder is not None:
            return decoder(packet)
        linktype = packet.linktype
        name = OTHER_LINKTYPES.get(linktype, "unknown")
        raise CaptureFormatError(
            f"linktype {linktype} ({name}) is not USB traffic that usbtrace reads; "
            "it reads 189 and 220 (Linux usbmon), 249 (USBPcap) and 266 (macOS)")


def events(stream: BinaryIO, stats: CaptureStats,
           progress: Callable[[int], None] | None = None,
           position: Callable[[], int] | None = None) -> Iterator[Event]:
    """Events of a capture, with times relative to its first record.  The container's
    header is read here (a file that is no capture fails at once), the records as the
    events are taken.

    ``position`` counts the bytes taken from the source for ``progress`` (the bytes of a
    compressed file, not of the capture inside); a ``SourceError`` ends the events
    after everything before it has been given, then goes on up."""
    reader = CaptureReader(stream)
    stats.interface_drops = reader.drops
    # the loop itself, not a generator around it: one resumption a record, not two
    return _events(reader, stats, progress, position or (lambda: reader.bytes_read))


def _events(reader: CaptureReader, stats: CaptureStats,
            progress: Callable[[int], None] | None, where: Callable[[], int]
            ) -> Iterator[Event]:
    """The record loop: any container, any linktype, every check.  A classic pcap file
    of usbmon records first goes through a loop of its own (below), which hands the
    general one whatever it does not take; both are inline here, so that a record costs
    one generator resumption, not two."""
    decoder = Decoder(stats)
    usbmon_types = (usbmon.LINKTYPE_USB_LINUX, usbmon.LINKTYPE_USB_LINUX_MMAPPED)
    decode_usbmon = usbmon.decode_record
    usbpcap_type = usbpcap.LINKTYPE_USBPCAP
    decode_usbpcap = decoder.usbpcap.decode_record
    malformed = (usbmon.MalformedRecord, usbpcap.MalformedRecord, darwin.MalformedRecord,
                 CaptureFormatError)
    origin: float | None = None
    previous = -math.inf  # the last USB record's time
    sharing = AddressSharing(reader.interface_names)
    last = 0
    count = 0
    failure: SourceError | None = None
    try:
        records: Iterator[tuple[int, float, int, bytes, int, int, bool]]
        if reader.kind != "pcap":
            records = reader.records()
        else:
            # Classic pcap: usbmon's records framed and decoded in one step, with one
            # ``unpack_from`` for the record header and the usbmon header together, one
            # slice (the payload) and no tuple or call in between.  For such a record it
            # does what ``pcap_records``, the general loop and ``usbmon.decode_record`` do
            # (tests/test_usbmon_pcap_loop.py compares the two).  The first record it
            # would have to judge otherwise (another linktype, an appended file header, a
            # record too short, too long or cut short at the end, a type usbmon does not
            # have) goes, with all the rest, to the general loop.
            big, nano, linktype, buf = reader.pcap_start()
            number = pos = 0
            if linktype in usbmon_types and USBMON_PCAP_LOOP:
                order = ">" if big else "<"
                unpack = struct.Struct(order + "IIII" + usbmon.HEADER_LE.format[1:]).unpack_from
                descriptors = struct.Struct(order + "I").unpack_from  # mmapped: ndesc
                mmapped = linktype == usbmon.LINKTYPE_USB_LINUX_MMAPPED
                size = 16 + (64 if mmapped else 48)  # record header and usbmon header
                scale = 1e-9 if nano else 1e-6
                xfer_types = usbmon.XFER_TYPES
                statuses = usbmon.ERRNO_TO_USBD
                data_present = usbmon.DATA_PRESENT
                pending, failed = U.USBD_STATUS_PENDING, U.USBD_STATUS_REQUEST_FAILED
                taken = 0  # bytes framed and not yet added to reader.bytes_read
                try:
                    while True:
                        if pos + size > len(buf):
                            reader.bytes_read += taken
                            taken = 0
                            buf = reader.more(buf, pos, size)
                            pos = 0
                            if len(buf) < size:
                                break
                        (sec, frac, caplen, _, urb_id, kind, xfer, epnum, devnum, busnum,
                         flag_setup, flag_data, _, _, status, length, len_cap,
                         setup) = unpack(buf, pos)
                        end = pos + 16 + caplen
                        if caplen < size - 16 or caplen > MAX_RECORD or \
                                xfer not in xfer_types or \
                                (kind != 0x53 and kind != 0x43 and kind != 0x45):
                            break
                        if end > len(buf):
                            reader.bytes_read += taken
                            taken = 0
                            buf = reader.more(buf, pos, 16 + caplen)
                            pos, end = 0, 16 + caplen
                            if end > len(buf):
                                break
                        number += 1
                        count += 1
                        ts = sec + frac * scale
                        if origin is None:
                            origin = ts
                            stats.first_ts = origin
                            stats.linktype = linktype
                        if ts < previous:
                            stats.went_back(number, previous - ts)
                        previous = ts
                        transfer_type = xfer_types[xfer]
                        if flag_data in data_present and len_cap:
                            start = pos + size
                            if mmapped and transfer_type == ISOCHRONOUS:
                                start += 16 * descriptors(buf, pos + 76)[0]
                            stop = start + len_cap
                            payload = buf[start : stop if stop < end else end]
                        else:
                            payload = b""
                        taken += end - pos
                        pos = end
                        direction_in = epnum & 0x80
                        if kind == 0x53:  # 'S'
                            if transfer_type == CONTROL and flag_setup == 0:
                                direction_in = setup[0] & 0x80
                            else:
                                setup = None
                            yield Event(SUBMIT, ts - origin, urb_id, "capture", None, None,
                                        None, None, None, None, None, None, busnum, devnum,
                                        epnum, transfer_type, pending, length, setup, payload,
                                        length if not direction_in and
                                        transfer_type != ISOCHRONOUS else len(payload),
                                        None, None, number, status)
                        else:  # 'C', 'E'
                            yield Event(COMPLETE, ts - origin, urb_id, "capture", None, None,
                                        None, None, None, None,
                                        "submission error" if kind == 0x45 else None, None,
                                        busnum, devnum, epnum, transfer_type,
                                        statuses.get(status, failed), length, None, payload,
                                        length if direction_in and
                                        transfer_type != ISOCHRONOUS else len(payload),
                                        None, None, number, status)
                        if progress is not None and not count & 255:
                            reader.bytes_read += taken
                            taken = 0
                            if where() - last >= 1 << 20:
                                progress(where() - last)
                                last = where()
                finally:
                    reader.bytes_read += taken
            records = reader.pcap_records(buf, pos, number, big, nano, linktype)
        # pcapng: usbmon's Enhanced Packet Blocks taken in their own loop, after the
        # general one has met the first (which read the section and its interfaces)
        fuse = reader.kind == "pcapng" and USBMON_PCAP_LOOP
        while True:
            for record in records:
                count += 1
                number, ts, linktype, data, _, iface, big = record
                if linktype not in LINKTYPE_NAMES:
                    # another interface of a pcapng (Ethernet beside usbmon, say): not ours
                    stats.skipped += 1
                    stats.other_linktypes.add(linktype)
                    continue
                if origin is None:
                    origin = ts
                    stats.first_ts = origin
                    stats.linktype = linktype
                if ts < previous:  # the time goes back: service times across it are wrong
                    stats.went_back(number, previous - ts)
                previous = ts
                if reader.lost_before:  # the capture says packets were lost right here
                    yield Event(GAP, ts - origin, 0, information=reader.lost_before)
                try:
                    if linktype in usbmon_types:  # the common case: no Packet, no list
                        event = decode_usbmon(number, ts - origin, linktype, data, big)
                        if reader.several:  # a section of several interfaces (rare)
                            sharing.see(reader.section, iface, [event])
                        yield event
                    elif linktype == usbpcap_type:  # times are made relative before decoding:
                        produced = decode_usbpcap(number, ts - origin, data)  # held events too
                        if reader.several:
                            sharing.see(reader.section, iface, produced)
                        yield from produced
                    else:
                        produced = decoder.decode(
                            Packet(number, ts - origin, linktype, data, record[4], iface, big))
                        if reader.several:
                            sharing.see(reader.section, iface, produced)
                        yield from produced
                except malformed as e:
                    stats.malformed.append((number, str(e)))
                if progress is not None and not count & 255 and where() - last >= 1 << 20:
                    progress(where() - last)
                    last = where()
                if fuse and not reader.several and (linktype in usbmon_types or (
                        linktype == usbpcap_type and not reader.big)):
                    break
            else:
                break  # no more records
            # Enhanced Packet Blocks of usbmon records, framed and decoded in one step as in
            # classic pcap (above), while each is what the reader's own hot path takes (the
            # block whole in its buffer, no options, its interface readable) and a usbmon
            # record the general loop would decode without complaint; the first that is
            # not goes back to the reader's generator, which goes on from there.  USBPcap's
            # likewise, for what ``UsbpcapDecoder._bulk`` takes: a bulk transfer (not a
            # pipe request) while no control SETUP stage is held.
            buf = reader._buffer
            pos = reader._pos
            fast = reader.epb_fast
            number = reader.number
            ts = reader.ts
            unpack = EPB_USBMON[reader.big]
            epb_usbpcap = EPB_USBPCAP
            held = decoder.usbpcap._setup  # fast only while it holds no SETUP stage
            bulk, pipe_requests = usbpcap.TRANSFER_BULK, usbpcap.PIPE_REQUESTS
            to_fdo = usbpcap.USBPCAP_INFO_PDO_TO_FDO
            descriptors = NDESC[reader.big]
            xfer_types = usbmon.XFER_TYPES
            statuses = usbmon.ERRNO_TO_USBD
            data_present = usbmon.DATA_PRESENT
            pending, failed = U.USBD_STATUS_PENDING, U.USBD_STATUS_REQUEST_FAILED
            reader.lost_before = 0
            taken = 0
            try:
                while linktype == usbpcap_type and pos + 55 <= len(buf):
                    (block_type, length, iface, hi, lo, caplen, _, header_len, irp_id, status,
                     function, info, busnum, devnum, epnum, transfer,
                     data_length) = epb_usbpcap(buf, pos)
                    end = pos + length
                    if block_type != BT_EPB or end > len(buf) or length % 4 or \
                            length > MAX_RECORD or iface >= len(fast) or \
                            length - 12 != 20 + caplen + (-caplen % 4):
                        break
                    described = fast[iface]
                    if described is None or described[0] != usbpcap_type:
                        break
                    _, tick, offset = described
                    stamp = ((hi << 32) | lo) * tick + offset
                    if stamp > MAX_TIMESTAMP or caplen < 27 or header_len < 27 or \
                            header_len > caplen or devnum > 127 or transfer != bulk or \
                            held or function in pipe_requests:
                        break
                    ts = stamp
                    number += 1
                    count += 1
                    if ts < previous:
                        stats.went_back(number, previous - ts)
                    previous = ts
                    start = pos + 28 + header_len
                    stop = start + data_length
                    limit = pos + 28 + caplen
                    payload = buf[start : stop if stop < limit else limit]
                    captured = len(payload)
                    taken += length
                    pos = end
                    if info & to_fdo:  # a completion: see UsbpcapDecoder._bulk
                        yield Event(COMPLETE, ts - origin, irp_id, "capture", None, None, None,
                                    None, None, None, None, function, busnum, devnum, epnum,
                                    BULK, status, data_length if epnum & 0x80 else None, None,
                                    payload, data_length if captured < data_length else captured,
                                    None, None, number, status)
                    elif epnum & 0x80:
                        yield Event(SUBMIT, ts - origin, irp_id, "capture", None, None, None,
                                    None, None, None, None, function, busnum, devnum, epnum,
                                    BULK, None, None, None, b"",
                                    data_length if captured < data_length else None, None,
                                    None, number, status)
                    else:
                        yield Event(SUBMIT, ts - origin, irp_id, "capture", None, None, None,
                                    None, None, None, None, function, busnum, devnum, epnum,
                                    BULK, None, data_length, None, payload,
                                    data_length if captured < data_length else captured, None,
                                    None, number, status)
                    if progress is not None and not count & 255:
                        reader.bytes_read += taken
                        taken = 0
                        if where() - last >= 1 << 20:
                            progress(where() - last)
                            last = where()
                while linktype != usbpcap_type and pos + 76 <= len(buf):
                    (block_type, length, iface, hi, lo, caplen, _, urb_id, kind, xfer, epnum,
                     devnum, busnum, flag_setup, flag_data, _, _, status, urb_length, len_cap,
                     setup) = unpack(buf, pos)
                    end = pos + length
                    if block_type != BT_EPB or end > len(buf) or length % 4 or \
                            length > MAX_RECORD or iface >= len(fast) or \
                            length - 12 != 20 + caplen + (-caplen % 4):
                        break
                    described = fast[iface]
                    if described is None:
                        break
                    linktype, tick, offset = described
                    size = 48 if linktype == usbmon.LINKTYPE_USB_LINUX else \
                        64 if linktype == usbmon.LINKTYPE_USB_LINUX_MMAPPED else 0
                    stamp = ((hi << 32) | lo) * tick + offset
                    if not size or caplen < size or stamp > MAX_TIMESTAMP or \
                            xfer not in xfer_types or \
                            (kind != 0x53 and kind != 0x43 and kind != 0x45):
                        break
                    ts = stamp
                    number += 1
                    count += 1
                    if origin is None:
                        origin = ts
                        stats.first_ts = origin
                        stats.linktype = linktype
                    if ts < previous:
                        stats.went_back(number, previous - ts)
                    previous = ts
                    transfer_type = xfer_types[xfer]
                    if flag_data in data_present and len_cap:
                        start = pos + 28 + size
                        if size == 64 and transfer_type == ISOCHRONOUS:
                            start += 16 * descriptors(buf, pos + 88)[0]
                        stop = start + len_cap
                        limit = pos + 28 + caplen
                        payload = buf[start : stop if stop < limit else limit]
                    else:
                        payload = b""
                    taken += length
                    pos = end
                    direction_in = epnum & 0x80
                    if kind == 0x53:  # 'S'
                        if transfer_type == CONTROL and flag_setup == 0:
                            direction_in = setup[0] & 0x80
                        else:
                            setup = None
                        yield Event(SUBMIT, ts - origin, urb_id, "capture", None, None, None,
                                    None, None, None, None, None, busnum, devnum, epnum,
                                    transfer_type, pending, urb_length, setup, payload,
                                    urb_length if not direction_in and
                                    transfer_type != ISOCHRONOUS else len(payload),
                                    None, None, number, status)
                    else:  # 'C', 'E'
                        yield Event(COMPLETE, ts - origin, urb_id, "capture", None, None, None,
                                    None, None, None,
                                    "submission error" if kind == 0x45 else None, None,
                                    busnum, devnum, epnum, transfer_type,
                                    statuses.get(status, failed), urb_length, None, payload,
                                    urb_length if direction_in and
                                    transfer_type != ISOCHRONOUS else len(payload),
                                    None, None, number, status)
                    if progress is not None and not count & 255:
                        reader.bytes_read += taken
                        taken = 0
                        if where() - last >= 1 << 20:
                            progress(where() - last)
                            last = where()
            finally:
                reader._pos = pos
                reader.number = number
                reader.ts = ts
                reader.bytes_read += taken
    except SourceError as e:  # keep what came before, then say why it stopped
        failure = e
    stats.records = count
    if origin is None and stats.other_linktypes and failure is None:
        decoder.decode(Packet(0, 0.0, min(stats.other_linktypes), b"", 0))  # names it
    yield from decoder.usbpcap.flush()  # their times are relative already
    stats.folded = decoder.usbpcap.folded
    stats.appended = reader.appended
    stats.untimed = reader.untimed
    stats.shared = sharing.close()
    stats.shared_unlisted = sharing.unlisted
    stats.sections = reader.section + 1
    stats.malformed.extend(reader.malformed)
    if progress is not None:
        progress(where() - last)
    if failure is not None:
        raise failure


def source_name(path: Path, linktype: int | None) -> str:
    return LINKTYPE_NAMES.get(linktype or -1, "capture")
