"""The class driver sends a failed piece again from a DPC, or from a timer's DPC after a
retry interval: classpnp ``retry.c`` (Windows-driver-samples storage/class/classpnp):
RetryTransferPacket -> TransferPacketQueueRetryDpc, KeInsertQueueDpc when
RetryIn100nsUnits is 0, else KeSetTimer; NOT_READY_RETRY_INTERVAL (classp.h) for a unit
that is becoming ready."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from tests.conftest import Stack
from usbtrace.devices.faults import parse_fault
from usbtrace.drivers import disk
from usbtrace.storage.srb import SRB_STATUS_AUTOSENSE_VALID, SRB_STATUS_ERROR, Srb
from usbtrace.wdm.sched import DISPATCH_LEVEL


def _retries(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool, int]]:
    """(IRQL, sent from TransferPacketRetryTimerDpc, virtual time) of each retry."""
    seen: list[tuple[int, bool, int]] = []
    real = disk._send_transfer

    def spy(lower: Any, assoc: Any, srb: Srb, retries: int, length: int) -> None:
        if retries:
            from_dpc = any(f.function == "TransferPacketRetryTimerDpc"
                           for f in inspect.stack())
            seen.append((stack.machine.scheduler.irql, from_dpc,
                         stack.machine.scheduler.now_ns()))
        real(lower, assoc, srb, retries, length)

    monkeypatch.setattr(disk, "_send_transfer", spy)
    return seen


def test_a_retry_is_sent_from_the_retry_dpc(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _retries(stack, monkeypatch)
    h = stack.open()
    stack.stick.inject(parse_fault(f"invalid-csw@{stack.stick.bot.commands + 1}"))
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512
    assert [(irql, from_dpc) for irql, from_dpc, _ in seen] == [(DISPATCH_LEVEL, True)]


def test_a_retry_interval_arms_a_timer(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _retries(stack, monkeypatch)
    monkeypatch.setattr(disk, "_retry_interval_ns", lambda srb: 2_000_000_000)
    h = stack.open()
    stack.stick.inject(parse_fault(f"invalid-csw@{stack.stick.bot.commands + 1}"))
    start = stack.machine.scheduler.now_ns()
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512
    assert len(seen) == 1 and seen[0][1] and seen[0][2] - start >= 2_000_000_000


def test_becoming_ready_waits_not_ready_retry_interval() -> None:
    srb = Srb(bytes(10), 512, 0)
    srb.srb_status = SRB_STATUS_ERROR | SRB_STATUS_AUTOSENSE_VALID
    srb.sense_info_buffer[:14] = bytes([0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x01])
    assert disk._retry_interval_ns(srb) == disk.NOT_READY_RETRY_INTERVAL * 1_000_000_000
    srb.sense_info_buffer[2] = 0x06  # UNIT ATTENTION: again at once
    assert disk._retry_interval_ns(srb) == 0
