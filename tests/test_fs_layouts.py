"""The file-system and capture layouts, on sectors and records from real captures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usbtrace.capture import pcap, usbpcap
from usbtrace.capture.pcap import CaptureReader
from usbtrace.fs import layouts as L
from usbtrace.fs.shadow import Attributor, _fat_volume
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture


def sectors_of(tmp_path: Path, name: str) -> dict[int, bytes]:
    """Every whole sector a capture's READ commands returned, by LBA."""
    db = Database(tmp_path / "s.db")
    result = import_capture(db, shared_capture(name))
    out: dict[int, bytes] = {}
    for _, opcode, lba, _blocks, data, status in db.stored_commands(result.session_id or 0):
        if opcode == 0x28 and status == "good" and lba is not None:
            for i in range(len(data) // 512):
                out[lba + i] = data[i * 512 : (i + 1) * 512]
    return out


def test_fat16_boot_sector_and_directory_entries(tmp_path: Path) -> None:
    sectors = sectors_of(tmp_path, "linux-qemu-fat16-xhci.usbmon.pcap")
    boot = sectors[0]
    bpb = L.BiosParameterBlock.parse(boot)
    ext = L.Fat16Extension.parse(boot[36:])
    assert ext.BS_FilSysType == b"FAT16   " and ext.BS_VolLab == b"FAT16CAP   "
    volume = _fat_volume(0, boot)
    assert volume is not None and not isinstance(volume, str)
    assert (volume.spc, volume.reserved, volume.fat_size) == \
        (bpb.BPB_SecPerClus, bpb.BPB_RsvdSecCnt, bpb.BPB_FATSz16)
    root = b"".join(sectors.get(volume.root_start + i, b"") for i in range(volume.root_sectors))
    entries = [root[i : i + 32] for i in range(0, len(root), 32) if root[i] not in (0, 0xE5)]
    long_names = [L.LongNameEntry.parse(e) for e in entries if e[11] == L.ATTR_LONG_NAME]
    shorts = [L.DirectoryEntry.parse(e) for e in entries if e[11] != L.ATTR_LONG_NAME]
    assert long_names and shorts
    checksums = {L.lfn_checksum(s.DIR_Name) for s in shorts}
    assert all(n.LDIR_Chksum in checksums for n in long_names)  # every long name has its 8.3


def test_exfat_boot_sector_and_entry_sets(tmp_path: Path) -> None:
    sectors = sectors_of(tmp_path, "ajbanjara__USBMSC-USBPcap.pcapng")
    mbr = L.MasterBootRecord.parse(sectors[0])
    start = mbr.partitions[0].lba_first
    assert mbr.partitions[0].partition_type == 0x07
    boot = L.ExfatBootSector.parse(sectors[start])
    heap = start + boot.ClusterHeapOffset
    spc = 1 << boot.SectorsPerClusterShift
    root_lba = heap + (boot.FirstClusterOfRootDirectory - 2) * spc
    root = b"".join(sectors.get(root_lba + i, b"") for i in range(spc))
    kinds = [root[i] for i in range(0, len(root), 32)]
    assert 0x81 in kinds and 0x82 in kinds and 0x85 in kinds
    bitmap = L.ExfatAllocationBitmapEntry.parse(root[kinds.index(0x81) * 32:])
    assert bitmap.DataLength * 8 >= boot.ClusterCount
    at = kinds.index(0x85) * 32
    file_entry = L.ExfatFileEntry.parse(root[at:])
    entry_set = root[at : at + 32 * (1 + file_entry.SecondaryCount)]
    assert L.exfat_entry_set_checksum(entry_set) == file_entry.SetChecksum
    stream = L.ExfatStreamExtensionEntry.parse(entry_set[32:])
    name = b"".join(L.ExfatFileNameEntry.parse(entry_set[32 * k:]).FileName
                    for k in range(2, 1 + file_entry.SecondaryCount))
    assert name.decode("utf-16-le")[: stream.NameLength] == "System Volume Information"


def test_usbpcap_header_layout_agrees_with_the_struct_reader() -> None:
    with open(shared_capture("ajbanjara__USBMSC-USBPcap.pcapng"), "rb") as f:
        packets = list(CaptureReader(f))
    for packet in packets[:50]:
        parsed = usbpcap.UsbpcapHeader.parse(packet.data)
        fields = usbpcap.HEADER.unpack_from(packet.data)
        assert (parsed.headerLen, parsed.irpId, parsed.status, parsed.function,
                parsed.dataLength) == (fields[0], fields[1], fields[2], fields[3], fields[9])
        assert usbpcap.UsbpcapHeader.build(parsed) == packet.data[:27]


def test_pcap_layouts_agree_with_a_real_file() -> None:
    data = shared_capture("ajbanjara__usb_memory_stick.pcap").read_bytes()
    header = pcap.PcapFileHeader.parse(data)
    assert (header.magic_number, header.linktype) == (pcap.PCAP_MAGIC_US, 189)
    first = pcap.PcapRecordHeader.parse(data[24:])
    assert first.caplen == 49 and pcap.PcapFileHeader.build(header) == data[:24]
    ng = shared_capture("ajbanjara__USBMSC-USBPcap.pcapng").read_bytes()
    block = pcap.PcapngBlockHeader.parse(ng)
    assert block.block_type == pcap.PCAPNG_SHB and block.block_total_length % 4 == 0


RECORDS: list[tuple[Any, Any]] = [
    (L.PartitionEntry, st.fixed_dictionaries(dict(
        status=st.integers(0, 255), chs_first=st.binary(min_size=3, max_size=3),
        partition_type=st.integers(0, 255), chs_last=st.binary(min_size=3, max_size=3),
        lba_first=st.integers(0, 2**32 - 1), sector_count=st.integers(0, 2**32 - 1)))),
    (L.DirectoryEntry, st.fixed_dictionaries(dict(
        DIR_Name=st.binary(min_size=11, max_size=11), DIR_Attr=st.integers(0, 255),
        DIR_NTRes=st.integers(0, 255), DIR_CrtTimeTenth=st.integers(0, 255),
        DIR_CrtTime=st.integers(0, 65535), DIR_CrtDate=st.integers(0, 65535),
        DIR_LstAccDate=st.integers(0, 65535), DIR_FstClusHI=st.integers(0, 65535),
        DIR_WrtTime=st.integers(0, 65535), DIR_WrtDate=st.integers(0, 65535),
        DIR_FstClusLO=st.integers(0, 65535), DIR_FileSize=st.integers(0, 2**32 - 1)))),
    (L.ExfatStreamExtensionEntry, st.fixed_dictionaries(dict(
        GeneralSecondaryFlags=st.integers(0, 255), Reserved1=st.integers(0, 255),
        NameLength=st.integers(0, 255), NameHash=st.integers(0, 65535),
        Reserved2=st.integers(0, 65535), ValidDataLength=st.integers(0, 2**64 - 1),
        Reserved3=st.integers(0, 2**32 - 1), FirstCluster=st.integers(0, 2**32 - 1),
        DataLength=st.integers(0, 2**64 - 1)))),
]


@pytest.mark.parametrize("layout,strategy", RECORDS, ids=[r[0].name or str(i)
                                                          for i, r in enumerate(RECORDS)])
def test_fs_layouts_round_trip(layout: Any, strategy: Any) -> None:
    compiled = layout.compile()

    @given(strategy)
    def check(values: dict[str, Any]) -> None:
        blob = layout.build(values)
        assert len(blob) in (16, 32)
        assert compiled.build(values) == blob
        parsed = layout.parse(blob)
        assert all(parsed[k] == v for k, v in values.items())

    check()


def test_fsinfo_and_lfn_checksum() -> None:
    info = L.FsInfo.build(dict(FSI_Reserved1=bytes(480), FSI_Free_Count=100, FSI_Nxt_Free=3,
                               FSI_Reserved2=bytes(12)))
    assert len(info) == 512 and L.FsInfo.parse(info).FSI_Free_Count == 100
    # the checksum rotates as it adds: the order of the characters matters
    assert L.lfn_checksum(b"FOO     BAR") != L.lfn_checksum(b"BAR     FOO")


def test_attributor_keeps_nothing_while_warming() -> None:
    a = Attributor()
    a.warm([(1, 0x28, 5, 1, bytes(512), "good")])
    assert a.flush() == []
