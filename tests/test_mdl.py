"""MDLs on the I/O path: the caller's buffer described once, partial MDLs below.

References: Microsoft docs "Using MDLs" (IoAllocateMdl, IoBuildPartialMdl,
MmGetSystemAddressForMdlSafe); classpnp ``xferpkt.c`` (a transfer packet's IRP
carries the original IRP's MDL); ReactOS ``drivers/usb/usbstor/scsi.c``
(USBSTOR_SendRequest: the data URB's TransferBufferMDL is a partial MDL of the IRP's
MDL for the SRB's DataBuffer and length, TransferBuffer NULL) and ``pdo.c``
(USBSTOR_AllocateIrp: MmBuildMdlForNonPagedPool for the driver's own buffers).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stack
from usbtrace.drivers import usbstor
from usbtrace.usb import urb as U
from usbtrace.wdm.mdl import (
    MDL_PARTIAL,
    IoAllocateMdl,
    IoBuildPartialMdl,
    IoFreeMdl,
    MmGetSystemAddressForMdlSafe,
    MmProbeAndLockPages,
)
from usbtrace.wdm.sched import BugCheck


def test_partial_mdl_maps_the_part_of_the_source() -> None:
    buffer = bytearray(range(256)) * 4
    source = IoAllocateMdl(buffer, 1024)
    MmProbeAndLockPages(source)
    part = IoAllocateMdl(buffer, 0)
    IoBuildPartialMdl(source, part, 300, 100)
    assert part.mdl_flags & MDL_PARTIAL
    assert bytes(MmGetSystemAddressForMdlSafe(part)) == bytes(buffer[300:400])
    with pytest.raises(BugCheck):
        IoBuildPartialMdl(source, part, 1000, 100)  # outside the source


def test_mapping_an_unlocked_or_freed_mdl_is_a_bug_check() -> None:
    mdl = IoAllocateMdl(bytearray(512), 512)
    with pytest.raises(BugCheck, match="not locked"):
        MmGetSystemAddressForMdlSafe(mdl)
    MmProbeAndLockPages(mdl)
    IoFreeMdl(mdl)
    with pytest.raises(BugCheck):
        MmGetSystemAddressForMdlSafe(mdl)
    with pytest.raises(BugCheck, match="freed twice"):
        IoFreeMdl(mdl)


def test_each_data_urb_carries_a_partial_mdl_of_the_reads_mdl(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, Any, int, int]] = []
    real = usbstor.IoCallDriver

    def spy(device: Any, irp: Any) -> int:
        urb = irp.IoGetNextIrpStackLocation().parameters.type3_input_buffer
        if isinstance(urb, U.UrbBulkOrInterruptTransfer) and urb.length > 31:
            mdl = urb.transfer_buffer_mdl
            seen.append((urb.buffer, mdl.view.obj if mdl else None,
                         mdl.byte_offset if mdl else -1, mdl.byte_count if mdl else -1))
        return real(device, irp)

    monkeypatch.setattr(usbstor, "IoCallDriver", spy)
    h = stack.open()
    buffer = bytearray(200 * 1024)
    assert stack.win32.ReadFile(h, buffer, 1 << 20) == len(buffer)
    # four SRBs (split at 64 KiB), each data URB with TransferBuffer NULL and a partial
    # MDL over the caller's own buffer at the SRB's offset
    assert [(b, v is buffer, o, n) for b, v, o, n in seen] == [
        (None, True, 0, 65536), (None, True, 65536, 65536), (None, True, 131072, 65536),
        (None, True, 196608, 8192)]
