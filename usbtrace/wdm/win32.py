"""The I/O manager's user-mode face: CreateFile, ReadFile, WriteFile, DeviceIoControl.

Each call builds the IRP the I/O manager would (NtReadFile and friends): sent
to the top of the device's stack, with the handle's file object in the stack
location, the caller's buffer as the MDL (DO_DIRECT_IO) and an event to wait
on.  Synchronous calls wait; overlapped ones return an :class:`Overlapped` at
once, finished later by ``GetOverlappedResult``.  Failures raise
:class:`NtStatusError` carrying the NTSTATUS.

A file object holds a reference on the device it opened from the moment
IRP_MJ_CREATE succeeds: CloseHandle sends IRP_MJ_CLEANUP, then IRP_MJ_CLOSE,
as the last handle to a file object goes away, and then drops that
reference (IopDeleteFile), which is what lets a surprise-removed device get
its IRP_MN_REMOVE_DEVICE.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from usbtrace.errors import UsbtraceError
from usbtrace.wdm.device import (
    FileObject,
    IoGetAttachedDevice,
    ObDereferenceObject,
    ObReferenceObject,
)
from usbtrace.wdm.iomgr import IoCallDriver, IoCancelIrp
from usbtrace.wdm.irp import (
    IRP_BUFFERED_IO,
    IRP_DEALLOCATE_BUFFER,
    IRP_INPUT_OPERATION,
    IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE,
    IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_FLUSH_BUFFERS,
    IRP_MJ_READ,
    IRP_MJ_WRITE,
    IRP_NOCACHE,
    IRP_READ_OPERATION,
    IRP_WRITE_OPERATION,
    CreateParameters,
    DeviceIoControlParameters,
    IoStatusBlock,
    Irp,
    ReadWriteParameters,
)
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.mdl import IoAllocateMdl, MmProbeAndLockPages
from usbtrace.wdm.sched import PASSIVE_LEVEL, KEvent
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT, METHOD_NEITHER = 0, 1, 2, 3
STATUS_PENDING = NTSTATUS.STATUS_PENDING  # read once: an Enum class's attributes are slow
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_READ, FILE_SHARE_WRITE = 1, 2


class NtStatusError(UsbtraceError):
    def __init__(self, status: int, call: str) -> None:
        try:
            name = NTSTATUS(status).name
        except ValueError:
            name = f"0x{status:08X}"
        super().__init__(f"{call} failed: {name}")
        self.status = status


@dataclass
class Overlapped:
    irp: Irp
    event: KEvent
    iosb: IoStatusBlock
    call: str


class Win32:
    """Handles and the Win32 calls of one process on one kernel."""

    _handles = itertools.count(4, 4)

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.handles: dict[int, FileObject] = {}

    # ---- helpers -------------------------------------------------------------------

    def _file(self, handle: int) -> FileObject:
        file_object = self.handles.get(handle)
        if file_object is None:
            raise NtStatusError(NTSTATUS.STATUS_INVALID_HANDLE, "handle")
        return file_object

    def _send(self, file_object: FileObject, irp: Irp, call: str,
              overlapped: bool = False) -> Overlapped | int:
        scheduler = self.kernel.scheduler
        if scheduler.halted is not None:
            scheduler.check_running(call)
        if scheduler.irql > PASSIVE_LEVEL:
            scheduler.require_irql(PASSIVE_LEVEL, call)
        top = IoGetAttachedDevice(file_object.device_object)
        event = KEvent()
        iosb = IoStatusBlock()
        irp.user_event = event
        irp.user_iosb = iosb
        irp.requestor_mode = "user"
        irp.IoGetNextIrpStackLocation().file_object = file_object
        try:
            status = IoCallDriver(top, irp)
        except BaseException as e:  # an interrupt inside a dispatch routine halts the machine
            scheduler.interrupted(e)
            raise
        if overlapped:
            return Overlapped(irp, event, iosb, call)
        if status == STATUS_PENDING:
            scheduler.KeWaitForSingleObject(event, call)
        return self._finished(irp, iosb, call)

    def _result(self, pending: Overlapped) -> int:
        return self._finished(pending.irp, pending.iosb, pending.call)

    @staticmethod
    def _finished(irp: Irp, iosb: IoStatusBlock, call: str) -> int:
        status = iosb.status if irp.completed else irp.io_status.status
        if not NT_SUCCESS(status):
            raise NtStatusError(status, call)
        info = irp.io_status.information
        return info if isinstance(info, int) else 0

    def _irp(self, file_object: FileObject) -> Irp:
        top = IoGetAttachedDevice(file_object.device_object)
        return Irp(top.stack_size)

    # ---- the calls -----------------------------------------------------------------

    def CreateFile(self, path: str, access: int = GENERIC_READ | GENERIC_WRITE,  # noqa: N802
                   share: int = FILE_SHARE_READ | FILE_SHARE_WRITE) -> int:
        device = self.kernel.lookup(path)
        if device is None:
            raise NtStatusError(NTSTATUS.STATUS_NO_SUCH_DEVICE, f"CreateFile({path})")
        if device.deleted:
            raise NtStatusError(NTSTATUS.STATUS_DELETE_PENDING, f"CreateFile({path})")
        file_object = FileObject(device, path)
        irp = self._irp(file_object)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = IRP_MJ_CREATE
        loc.parameters = CreateParameters(access, share)
        self._send(file_object, irp, f"CreateFile({path})")
        ObReferenceObject(device)  # the file object's reference (IopParseDevice)
        handle = next(self._handles)
        self.handles[handle] = file_object
        return handle

    def _read_write(self, major: int, handle: int, buffer: bytearray | memoryview,
                    offset: int, length: int | None, overlapped: bool, call: str) -> Any:
        file_object = self._file(handle)
        n = len(buffer) if length is None else length
        if n > len(buffer):
            raise NtStatusError(NTSTATUS.STATUS_INVALID_PARAMETER, call)
        irp = self._irp(file_object)
        # DO_DIRECT_IO: the I/O manager describes the caller's buffer with an MDL and
        # locks its pages (IoAllocateMdl, MmProbeAndLockPages)
        mdl = IoAllocateMdl(buffer, n)
        MmProbeAndLockPages(mdl)
        irp.mdl_address = mdl
        # a raw disk handle's I/O is not cached
        irp.flags |= IRP_NOCACHE | (IRP_READ_OPERATION if major == IRP_MJ_READ
                                    else IRP_WRITE_OPERATION)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = major
        loc.parameters = ReadWriteParameters(n, offset)
        return self._send(file_object, irp, call, overlapped)

    def ReadFile(self, handle: int, buffer: bytearray | memoryview, offset: int,  # noqa: N802
                 length: int | None = None, overlapped: bool = False) -> Any:
        """Read into ``buffer`` at byte ``offset``; the count of bytes read."""
        return self._read_write(IRP_MJ_READ, handle, buffer, offset, length, overlapped,
                                "ReadFile")

    def WriteFile(self, handle: int, data: bytes | bytearray | memoryview, offset: int,  # noqa: N802
                  overlapped: bool = False) -> Any:
        buffer = data if isinstance(data, (bytearray, memoryview)) else bytearray(data)
        return self._read_write(IRP_MJ_WRITE, handle, buffer, offset, None, overlapped,
                                "WriteFile")

    def DeviceIoControl(self, handle: int, code: int, in_buffer: Any = None,  # noqa: N802
                        out_length: int = 0, overlapped: bool = False,
                        out_buffer: bytearray | None = None) -> Any:
        """Returns ``(bytes_returned, output)``.

        The buffers travel as the control code's transfer type says (Microsoft docs,
        "Buffer Descriptions for I/O Control Codes"):

        * METHOD_BUFFERED: one system buffer of max(input, output) bytes holding a
          copy of the input; IRP_BUFFERED_IO | IRP_DEALLOCATE_BUFFER, and
          IRP_INPUT_OPERATION when there is output, which the I/O manager copies back
          into ``out_buffer`` at completion (Information bytes);
        * METHOD_IN_DIRECT / METHOD_OUT_DIRECT: the input in the system buffer, the
          output buffer described by a locked MDL (MdlAddress);
        * METHOD_NEITHER: the caller's addresses as they are (Type3InputBuffer,
          UserBuffer).

        A structure (a Python object with the C structure's fields, the model's
        convention for the storage IOCTLs) is passed by reference as the system
        buffer, and its input length is its C size (``SIZE``).  The output returned
        is ``out_buffer`` when given, else the system buffer.
        """
        file_object = self._file(handle)
        irp = self._irp(file_object)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = IRP_MJ_DEVICE_CONTROL
        method = code & 3
        raw = isinstance(in_buffer, (bytes, bytearray, memoryview))
        in_length = len(in_buffer) if raw else getattr(in_buffer, "SIZE", 0) \
            if in_buffer is not None else 0
        if out_buffer is not None:
            out_length = len(out_buffer)
        type3 = None
        if method == METHOD_BUFFERED:
            irp.flags |= IRP_BUFFERED_IO
            if raw or (in_buffer is None and out_buffer is not None):
                system = bytearray(max(in_length, out_length))
                if raw:
                    system[:in_length] = in_buffer
                irp.system_buffer = system
                irp.flags |= IRP_DEALLOCATE_BUFFER
            else:
                irp.system_buffer = in_buffer
            if out_length:
                irp.flags |= IRP_INPUT_OPERATION
                irp.user_buffer = out_buffer
        elif method in (METHOD_IN_DIRECT, METHOD_OUT_DIRECT):
            if in_length:
                irp.flags |= IRP_BUFFERED_IO | IRP_DEALLOCATE_BUFFER
                irp.system_buffer = bytearray(in_buffer) if raw else in_buffer
            if out_buffer is not None and out_length:
                mdl = IoAllocateMdl(out_buffer, out_length)
                MmProbeAndLockPages(mdl)
                irp.mdl_address = mdl
        else:  # METHOD_NEITHER
            type3 = in_buffer
            irp.user_buffer = out_buffer
        loc.parameters = DeviceIoControlParameters(code, in_length, out_length, type3)
        result = self._send(file_object, irp, f"DeviceIoControl(0x{code:X})", overlapped)
        if overlapped:
            return result
        return result, out_buffer if out_buffer is not None else irp.system_buffer

    def FlushFileBuffers(self, handle: int) -> None:  # noqa: N802
        file_object = self._file(handle)
        irp = self._irp(file_object)
        irp.IoGetNextIrpStackLocation().major_function = IRP_MJ_FLUSH_BUFFERS
        self._send(file_object, irp, "FlushFileBuffers")

    def GetOverlappedResult(self, handle: int, pending: Overlapped, wait: bool = True) -> int:  # noqa: N802
        if not pending.event.signaled:
            if not wait:
                raise NtStatusError(NTSTATUS.STATUS_PENDING, pending.call)
            self.kernel.scheduler.KeWaitForSingleObject(pending.event, pending.call)
        return self._result(pending)

    def CancelIoEx(self, handle: int, pending: Overlapped) -> bool:  # noqa: N802
        self._file(handle)
        if pending.irp.completed:
            return False
        return IoCancelIrp(pending.irp)

    def CloseHandle(self, handle: int) -> None:  # noqa: N802
        file_object = self._file(handle)
        del self.handles[handle]
        if self.kernel.scheduler.halted is not None:
            return  # an interrupted machine runs nothing: the handle just goes
        for major in (IRP_MJ_CLEANUP, IRP_MJ_CLOSE):
            irp = self._irp(file_object)
            irp.IoGetNextIrpStackLocation().major_function = major
            try:
                self._send(file_object, irp, "CloseHandle")
            except NtStatusError:
                pass  # a vanished device still lets the handle go
        file_object.closed = True
        ObDereferenceObject(file_object.device_object)  # IopDeleteFile
