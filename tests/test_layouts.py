"""Every construct layout round-trips: parse(build(x)) == x, and the compiled form agrees."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from construct import Container
from hypothesis import given
from hypothesis import strategies as st

from usbtrace.storage import bot, scsi
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.urb import UrbHeader

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)


def fields(layout: Any, **values: Any) -> dict[str, Any]:
    return values


LAYOUTS: list[tuple[str, Any, Any]] = [
    ("device", d.DeviceDescriptor, st.fixed_dictionaries(dict(
        bcdUSB=u16, bDeviceClass=u8, bDeviceSubClass=u8, bDeviceProtocol=u8,
        bMaxPacketSize0=u8, idVendor=u16, idProduct=u16, bcdDevice=u16, iManufacturer=u8,
        iProduct=u8, iSerialNumber=u8, bNumConfigurations=u8))),
    ("configuration", d.ConfigurationDescriptor, st.fixed_dictionaries(dict(
        bDescriptorType=st.just(2), wTotalLength=u16, bNumInterfaces=u8,
        bConfigurationValue=u8, iConfiguration=u8, bmAttributes=u8, bMaxPower=u8))),
    ("interface", d.InterfaceDescriptor, st.fixed_dictionaries(dict(
        bInterfaceNumber=u8, bAlternateSetting=u8, bNumEndpoints=u8, bInterfaceClass=u8,
        bInterfaceSubClass=u8, bInterfaceProtocol=u8, iInterface=u8))),
    ("endpoint", d.EndpointDescriptor, st.fixed_dictionaries(dict(
        bEndpointAddress=u8, bmAttributes=u8, wMaxPacketSize=u16, bInterval=u8))),
    ("qualifier", d.DeviceQualifierDescriptor, st.fixed_dictionaries(dict(
        bcdUSB=u16, bDeviceClass=u8, bDeviceSubClass=u8, bDeviceProtocol=u8,
        bMaxPacketSize0=u8, bNumConfigurations=u8, bReserved=u8))),
    ("bos", d.BosDescriptor, st.fixed_dictionaries(dict(wTotalLength=u16, bNumDeviceCaps=u8))),
    ("setup", std.SetupPacket, st.fixed_dictionaries(dict(
        bmRequestType=u8, bRequest=u8, wValue=u16, wIndex=u16, wLength=u16))),
    ("cbw", bot.CommandBlockWrapper, st.fixed_dictionaries(dict(
        dCBWTag=u32, dCBWDataTransferLength=u32, bmCBWFlags=u8, bCBWLUN=u8, bCBWCBLength=u8,
        CBWCB=st.binary(min_size=16, max_size=16)))),
    ("csw", bot.CommandStatusWrapper, st.fixed_dictionaries(dict(
        dCSWTag=u32, dCSWDataResidue=u32, bCSWStatus=u8))),
    ("read10", scsi.Rw10Cdb, st.fixed_dictionaries(dict(
        operation_code=u8, flags=u8, logical_block_address=u32, group_number=u8,
        transfer_length=u16, control=u8))),
    ("read16", scsi.Rw16Cdb, st.fixed_dictionaries(dict(
        operation_code=u8, flags=u8, logical_block_address=u64, transfer_length=u32,
        group_number=u8, control=u8))),
    ("read6", scsi.Rw6Cdb, st.fixed_dictionaries(dict(
        operation_code=u8, logical_block_address=st.integers(0, 2**21 - 1),
        transfer_length=u8, control=u8))),
    ("inquiry", scsi.InquiryCdb, st.fixed_dictionaries(dict(
        operation_code=u8, evpd=u8, page_code=u8, allocation_length=u16, control=u8))),
    ("rc10data", scsi.ReadCapacity10Data, st.fixed_dictionaries(dict(
        returned_logical_block_address=u32, logical_block_length_in_bytes=u32))),
    ("mode6", scsi.ModeParameterHeader6, st.fixed_dictionaries(dict(
        mode_data_length=u8, medium_type=u8, device_specific_parameter=u8,
        block_descriptor_length=u8))),
    ("mode10", scsi.ModeParameterHeader10, st.fixed_dictionaries(dict(
        mode_data_length=u16, medium_type=u8, device_specific_parameter=u8, longlba=u8,
        reserved=u8, block_descriptor_length=u16))),
    ("capacity", scsi.CapacityDescriptor, st.fixed_dictionaries(dict(
        number_of_blocks=u32, descriptor_type=u8, block_length=st.integers(0, 2**24 - 1)))),
    ("urb_header", UrbHeader, st.fixed_dictionaries(dict(
        Length=u16, Function=u16, Status=u32, UsbdDeviceHandle=u64, UsbdFlags=u32))),
]


def strip(c: Any) -> Any:
    if isinstance(c, Container):
        return {k: strip(v) for k, v in c.items() if not k.startswith("_")}
    return c


@pytest.mark.parametrize("name,layout,strategy", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_round_trip_and_compiled_agree(name: str, layout: Any, strategy: Any) -> None:
    compiled = layout.compile()

    @given(strategy)
    def check(values: dict[str, Any]) -> None:
        blob = layout.build(values)
        parsed = strip(layout.parse(blob))
        for key, value in values.items():
            assert parsed[key] == value
        assert compiled.build(values) == blob
        assert strip(compiled.parse(blob)) == parsed

    check()


@given(u32, u32, st.booleans(), st.integers(0, 15), st.binary(min_size=1, max_size=16))
def test_cbw_struct_and_construct_agree(tag: int, length: int, data_in: bool, lun: int,
                                       cdb: bytes) -> None:
    raw = bot.build_cbw(tag, length, data_in, lun, cdb)
    parsed = bot.CommandBlockWrapper.parse(raw)
    assert (parsed.dCBWTag, parsed.dCBWDataTransferLength, parsed.bCBWLUN) == (tag, length, lun)
    cbw = bot.parse_cbw(raw)
    assert cbw is not None and cbw.cdb == cdb and cbw.data_in == data_in


@given(u32, u64, u32)
def test_cdb_decoding_reads_lba_and_length(lba32: int, lba64: int, n: int) -> None:
    ten = struct.pack(">BBIBHB", 0x28, 0, lba32, 0, n & 0xFFFF, 0)
    assert (scsi.decode_cdb(ten).lba, scsi.decode_cdb(ten).blocks) == (lba32, n & 0xFFFF)
    sixteen = struct.pack(">BBQIBB", 0x8A, 0, lba64, n, 0, 0)
    info = scsi.decode_cdb(sixteen)
    assert (info.name, info.lba, info.blocks) == ("write_16", lba64, n)


def test_sense_fixed_and_descriptor() -> None:
    fixed = scsi.build_fixed_sense(3, 0x11, 0, information=42)
    parsed = scsi.FixedSenseData.parse(fixed)
    assert parsed.information == 42 and parsed.additional_sense_code == 0x11
    assert scsi.parse_sense(fixed) == scsi.Sense(3, 0x11, 0)
    assert scsi.parse_sense(bytes([0x72, 5, 0x24, 0, 0, 0, 0, 0])) == scsi.Sense(5, 0x24, 0)
    assert scsi.Sense(5, 0x24, 0).description == "illegal_request: invalid field in cdb"


def test_configuration_tree_nests_interfaces_and_endpoints() -> None:
    from usbtrace.devices.image import DiskImage
    from usbtrace.devices.simulated import SimulatedStick

    blob = SimulatedStick(DiskImage.in_memory(1 << 20), speed="super").configuration_descriptor()
    tree = d.configuration_tree(blob)
    assert tree["configuration"].wTotalLength == len(blob)
    (iface,) = tree["interfaces"]
    assert iface["interface"].bInterfaceClass == 8
    assert [e.bEndpointAddress for e in iface["endpoints"]] == [0x81, 0x02]
    assert [x.type_name for x in iface["extra"]] == ["ss_endpoint_companion"] * 2
    assert d.decode_string(d.build_string("Stick ✓")) == "Stick ✓"
    assert std.request_name(std.build_setup(0x80, 6, 0x0100, 0, 18)) == "get_descriptor(device)"
    assert std.request_name(std.build_setup(0x21, 0xFF, 0, 0, 0)) == \
        "bulk_only_mass_storage_reset"
