"""On-disk layouts of the MBR, FAT12/16/32 and exFAT, as construct constants.

Field names follow Microsoft's "FAT32 File System Specification" (FAT: General
Overview of On-Disk Format, 1.03) and "exFAT File System Specification".
The shadow volume reads the same fields with ``struct`` where it is hot.
"""

from __future__ import annotations

from construct import (
    Array,
    Byte,
    Bytes,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
)

# MBR: 446 bytes of code, four partition entries, signature 55 AA
PartitionEntry = Struct(
    "status" / Int8ul,
    "chs_first" / Bytes(3),
    "partition_type" / Int8ul,
    "chs_last" / Bytes(3),
    "lba_first" / Int32ul,
    "sector_count" / Int32ul,
)
MasterBootRecord = Struct(
    "boot_code" / Bytes(446),
    "partitions" / Array(4, PartitionEntry),
    "signature" / Const(b"\x55\xaa"),
)
FAT_PARTITION_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0x07, 0xEF}

# FAT spec §3.1: the BPB common to FAT12/16/32
BiosParameterBlock = Struct(
    "BS_jmpBoot" / Bytes(3),
    "BS_OEMName" / Bytes(8),
    "BPB_BytsPerSec" / Int16ul,
    "BPB_SecPerClus" / Int8ul,
    "BPB_RsvdSecCnt" / Int16ul,
    "BPB_NumFATs" / Int8ul,
    "BPB_RootEntCnt" / Int16ul,
    "BPB_TotSec16" / Int16ul,
    "BPB_Media" / Int8ul,
    "BPB_FATSz16" / Int16ul,
    "BPB_SecPerTrk" / Int16ul,
    "BPB_NumHeads" / Int16ul,
    "BPB_HiddSec" / Int32ul,
    "BPB_TotSec32" / Int32ul,
)
# §3.2 FAT12/16 extension, §3.3 FAT32 extension (both at offset 36)
Fat16Extension = Struct(
    "BS_DrvNum" / Int8ul,
    "BS_Reserved1" / Int8ul,
    "BS_BootSig" / Int8ul,
    "BS_VolID" / Int32ul,
    "BS_VolLab" / Bytes(11),
    "BS_FilSysType" / Bytes(8),
)
Fat32Extension = Struct(
    "BPB_FATSz32" / Int32ul,
    "BPB_ExtFlags" / Int16ul,
    "BPB_FSVer" / Int16ul,
    "BPB_RootClus" / Int32ul,
    "BPB_FSInfo" / Int16ul,
    "BPB_BkBootSec" / Int16ul,
    "BPB_Reserved" / Bytes(12),
    "BS_DrvNum" / Int8ul,
    "BS_Reserved1" / Int8ul,
    "BS_BootSig" / Int8ul,
    "BS_VolID" / Int32ul,
    "BS_VolLab" / Bytes(11),
    "BS_FilSysType" / Bytes(8),
)
# §5 FSInfo sector
FsInfo = Struct(
    "FSI_LeadSig" / Const(0x41615252, Int32ul),
    "FSI_Reserved1" / Bytes(480),
    "FSI_StrucSig" / Const(0x61417272, Int32ul),
    "FSI_Free_Count" / Int32ul,
    "FSI_Nxt_Free" / Int32ul,
    "FSI_Reserved2" / Bytes(12),
    "FSI_TrailSig" / Const(0xAA550000, Int32ul),
)
# §6 directory entry, §7 long name entry
DirectoryEntry = Struct(
    "DIR_Name" / Bytes(11),
    "DIR_Attr" / Int8ul,
    "DIR_NTRes" / Int8ul,
    "DIR_CrtTimeTenth" / Int8ul,
    "DIR_CrtTime" / Int16ul,
    "DIR_CrtDate" / Int16ul,
    "DIR_LstAccDate" / Int16ul,
    "DIR_FstClusHI" / Int16ul,
    "DIR_WrtTime" / Int16ul,
    "DIR_WrtDate" / Int16ul,
    "DIR_FstClusLO" / Int16ul,
    "DIR_FileSize" / Int32ul,
)
LongNameEntry = Struct(
    "LDIR_Ord" / Int8ul,
    "LDIR_Name1" / Bytes(10),
    "LDIR_Attr" / Const(0x0F, Int8ul),
    "LDIR_Type" / Int8ul,
    "LDIR_Chksum" / Int8ul,
    "LDIR_Name2" / Bytes(12),
    "LDIR_FstClusLO" / Int16ul,
    "LDIR_Name3" / Bytes(4),
)
ATTR_READ_ONLY, ATTR_HIDDEN, ATTR_SYSTEM, ATTR_VOLUME_ID = 0x01, 0x02, 0x04, 0x08
ATTR_DIRECTORY, ATTR_ARCHIVE, ATTR_LONG_NAME = 0x10, 0x20, 0x0F

# exFAT spec §3.1 Main Boot Sector
ExfatBootSector = Struct(
    "JumpBoot" / Bytes(3),
    "FileSystemName" / Const(b"EXFAT   "),
    "MustBeZero" / Bytes(53),
    "PartitionOffset" / Int64ul,
    "VolumeLength" / Int64ul,
    "FatOffset" / Int32ul,
    "FatLength" / Int32ul,
    "ClusterHeapOffset" / Int32ul,
    "ClusterCount" / Int32ul,
    "FirstClusterOfRootDirectory" / Int32ul,
    "VolumeSerialNumber" / Int32ul,
    "FileSystemRevision" / Int16ul,
    "VolumeFlags" / Int16ul,
    "BytesPerSectorShift" / Int8ul,
    "SectorsPerClusterShift" / Int8ul,
    "NumberOfFats" / Int8ul,
    "DriveSelect" / Int8ul,
    "PercentInUse" / Int8ul,
    "Reserved" / Bytes(7),
    "BootCode" / Bytes(390),
    "BootSignature" / Const(0xAA55, Int16ul),
)
# exFAT §7: directory entries (32 bytes each)
ExfatAllocationBitmapEntry = Struct(
    "EntryType" / Const(0x81, Byte),
    "BitmapFlags" / Int8ul,
    "Reserved" / Bytes(18),
    "FirstCluster" / Int32ul,
    "DataLength" / Int64ul,
)
ExfatUpcaseTableEntry = Struct(
    "EntryType" / Const(0x82, Byte),
    "Reserved1" / Bytes(3),
    "TableChecksum" / Int32ul,
    "Reserved2" / Bytes(12),
    "FirstCluster" / Int32ul,
    "DataLength" / Int64ul,
)
ExfatFileEntry = Struct(
    "EntryType" / Const(0x85, Byte),
    "SecondaryCount" / Int8ul,
    "SetChecksum" / Int16ul,
    "FileAttributes" / Int16ul,
    "Reserved1" / Int16ul,
    "CreateTimestamp" / Int32ul,
    "LastModifiedTimestamp" / Int32ul,
    "LastAccessedTimestamp" / Int32ul,
    "Create10msIncrement" / Int8ul,
    "LastModified10msIncrement" / Int8ul,
    "CreateUtcOffset" / Int8ul,
    "LastModifiedUtcOffset" / Int8ul,
    "LastAccessedUtcOffset" / Int8ul,
    "Reserved2" / Bytes(7),
)
ExfatStreamExtensionEntry = Struct(
    "EntryType" / Const(0xC0, Byte),
    "GeneralSecondaryFlags" / Int8ul,  # bit 0 AllocationPossible, bit 1 NoFatChain
    "Reserved1" / Int8ul,
    "NameLength" / Int8ul,
    "NameHash" / Int16ul,
    "Reserved2" / Int16ul,
    "ValidDataLength" / Int64ul,
    "Reserved3" / Int32ul,
    "FirstCluster" / Int32ul,
    "DataLength" / Int64ul,
)
ExfatFileNameEntry = Struct(
    "EntryType" / Const(0xC1, Byte),
    "GeneralSecondaryFlags" / Int8ul,
    "FileName" / Bytes(30),
)


def lfn_checksum(short_name: bytes) -> int:
    """FAT spec §7: the checksum of an 11-byte short name, kept in each LFN entry."""
    total = 0
    for byte in short_name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def exfat_entry_set_checksum(entries: bytes) -> int:
    """exFAT §6.3.3: SetChecksum over a directory entry set, skipping its own field."""
    checksum = 0
    for i, byte in enumerate(entries):
        if i in (2, 3):
            continue
        checksum = (((checksum & 1) << 15) | (checksum >> 1)) + byte
        checksum &= 0xFFFF
    return checksum
