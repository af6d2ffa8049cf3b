"""An underrun (the device sent less than the allocation length) is SRB_STATUS_DATA_OVERRUN.

SCSI port drivers report a short data phase as SRB_STATUS_DATA_OVERRUN with
DataTransferLength cut to what moved, and the IRP succeeds: class drivers take the bytes
they got (Windows-driver-samples, classpnp and the changer drivers: "SRB_STATUS_SUCCESS ||
SRB_STATUS_DATA_OVERRUN" before using INQUIRY data; scsiport's IssueInquiry: "if INQUIRY
fails with a data underrun, indicate success").
"""

from __future__ import annotations

from tests.conftest import Stack
from usbtrace.drivers import usbstor
from usbtrace.storage import scsi
from usbtrace.storage.srb import (
    SRB_FLAGS_DATA_IN,
    SRB_STATUS_DATA_OVERRUN,
    SRB_STATUS_SUCCESS,
    Srb,
)
from usbtrace.wdm.status import NTSTATUS


def _fdo_ext(stack: Stack) -> usbstor.FdoExtension:
    driver = stack.machine.kernel.drivers["\\Driver\\usbstor"]
    return next(d.device_extension for d in driver.device_objects
                if isinstance(d.device_extension, usbstor.FdoExtension))


def test_short_mode_sense_is_an_underrun_that_succeeds(stack: Stack) -> None:
    data = bytearray(192)
    srb = Srb(bytes([scsi.MODE_SENSE_6, 0, scsi.MODE_PAGE_CACHING, 0, 192, 0]), 192,
              SRB_FLAGS_DATA_IN, memoryview(data))
    status = usbstor._execute_srb_sync(_fdo_ext(stack), srb)
    assert status == NTSTATUS.STATUS_SUCCESS
    assert srb.srb_status == SRB_STATUS_DATA_OVERRUN
    assert 4 <= srb.data_transfer_length < 192  # what the stick sent
    assert srb.data_transfer_length == data[0] + 1  # the mode data length says so


def test_a_full_data_phase_is_plain_success(stack: Stack) -> None:
    data = bytearray(8)
    srb = Srb(bytes([scsi.READ_CAPACITY_10]) + bytes(9), 8, SRB_FLAGS_DATA_IN,
              memoryview(data))
    assert usbstor._execute_srb_sync(_fdo_ext(stack), srb) == NTSTATUS.STATUS_SUCCESS
    assert (srb.srb_status, srb.data_transfer_length) == (SRB_STATUS_SUCCESS, 8)
