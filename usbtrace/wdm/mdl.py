"""Memory descriptor lists: how a buffer travels down a stack of direct-I/O drivers.

An MDL describes a buffer by its pages; a driver below the one that received the
request reaches the bytes through ``MmGetSystemAddressForMdlSafe``.  The model keeps
the buffer as a memoryview and the MDL as (that view, byte offset, byte count):

* the I/O manager builds the caller's MDL for READ/WRITE on a DO_DIRECT_IO device
  (IoAllocateMdl, MmProbeAndLockPages);
* a driver's own buffer gets one with MmBuildMdlForNonPagedPool (ReactOS usbstor
  ``pdo.c`` USBSTOR_AllocateIrp does so for its start-up commands);
* IoBuildPartialMdl describes part of another MDL: usbstor's data URB carries a
  partial MDL of the SRB's IRP's MDL, for the SRB's DataBuffer and length (ReactOS
  ``scsi.c``, USBSTOR_SendRequest).

Mapping an MDL that was never locked or built is a bug check, as in Windows.
"""

from __future__ import annotations

from usbtrace.wdm.sched import BugCheck

MDL_PAGES_LOCKED = 0x0002
MDL_SOURCE_IS_NONPAGED_POOL = 0x0004
MDL_PARTIAL = 0x0010
MDL_MAPPED_TO_SYSTEM_VA = 0x0001


class Mdl:
    """MDL: ``view`` is the described buffer's memory from its start address."""

    __slots__ = ("view", "byte_offset", "byte_count", "mdl_flags", "next", "freed",
                 "mapped_system_va")

    def __init__(self, view: memoryview, byte_offset: int, byte_count: int) -> None:
        self.view = view
        self.byte_offset = byte_offset  # from the start of ``view``
        self.byte_count = byte_count
        self.mdl_flags = 0
        self.next: Mdl | None = None
        self.freed = False
        # MappedSystemVa: the system-space mapping, once made (MDL_MAPPED_TO_SYSTEM_VA)
        self.mapped_system_va: memoryview | None = None

    def __repr__(self) -> str:
        return f"<Mdl +{self.byte_offset} {self.byte_count} B flags={self.mdl_flags:#x}>"


def IoAllocateMdl(buffer: bytearray | memoryview, length: int,  # noqa: N802
                  byte_offset: int = 0) -> Mdl:
    """An MDL for ``length`` bytes of ``buffer`` from ``byte_offset``; not yet locked."""
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    if byte_offset < 0 or byte_offset + length > len(view):
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       f"MDL of {length} bytes at +{byte_offset} outside a {len(view)}-byte buffer")
    return Mdl(view, byte_offset, length)


def MmProbeAndLockPages(mdl: Mdl) -> None:  # noqa: N802
    mdl.mdl_flags |= MDL_PAGES_LOCKED


def MmBuildMdlForNonPagedPool(mdl: Mdl) -> None:  # noqa: N802
    mdl.mdl_flags |= MDL_SOURCE_IS_NONPAGED_POOL


def IoBuildPartialMdl(source: Mdl, target: Mdl, byte_offset: int,  # noqa: N802
                      length: int) -> None:
    """Make ``target`` describe ``length`` bytes of ``source`` from ``byte_offset`` (an
    offset into the bytes ``source`` describes); zero length means the rest."""
    if length == 0:
        length = source.byte_count - byte_offset
    if byte_offset < 0 or byte_offset + length > source.byte_count:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       f"partial MDL +{byte_offset} {length} B outside {source!r}")
    target.view = source.view
    target.byte_offset = source.byte_offset + byte_offset
    target.byte_count = length
    target.mdl_flags = MDL_PARTIAL | (source.mdl_flags & (MDL_PAGES_LOCKED |
                                                          MDL_SOURCE_IS_NONPAGED_POOL))


def MmGetSystemAddressForMdlSafe(mdl: Mdl) -> memoryview:  # noqa: N802
    """The bytes the MDL describes (its system-space mapping).

    As the wdm.h macro: an MDL already mapped (MDL_MAPPED_TO_SYSTEM_VA) gives its
    MappedSystemVa again; only the first call maps.  Every driver that touches a
    transfer's data asks (the bus driver, then a filter that copies it)."""
    if mdl.freed or not mdl.mdl_flags & (MDL_PAGES_LOCKED | MDL_SOURCE_IS_NONPAGED_POOL):
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       f"mapping {mdl!r}, whose pages are not locked")
    if mdl.mdl_flags & MDL_MAPPED_TO_SYSTEM_VA:
        mapped = mdl.mapped_system_va
        if mapped is not None:
            return mapped
    start = mdl.byte_offset
    mapped = mdl.mapped_system_va = mdl.view[start : start + mdl.byte_count]
    mdl.mdl_flags |= MDL_MAPPED_TO_SYSTEM_VA
    return mapped


def MmGetMdlByteCount(mdl: Mdl) -> int:  # noqa: N802
    return mdl.byte_count


def IoFreeMdl(mdl: Mdl) -> None:  # noqa: N802
    if mdl.freed:
        raise BugCheck("BAD_POOL_CALLER", f"{mdl!r} freed twice")
    mdl.freed = True
