"""Workloads run from the top of the stack, through Win32 calls on the disk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from usbtrace.errors import UsbtraceError
from usbtrace.machine import Machine
from usbtrace.workloads.result import WorkloadResult


def get(name: str) -> Callable[..., WorkloadResult]:
    from usbtrace.workloads import files, raw

    workloads: dict[str, Callable[..., Any]] = {"raw": raw.raw, "files": files.files,
                                                "read": raw.read_only}
    try:
        return workloads[name]
    except KeyError:
        raise UsbtraceError(f"unknown workload {name!r}; choose from "
                            f"{', '.join(workloads)}") from None


WRITING = frozenset({"raw", "files"})  # workloads that change the medium

__all__ = ["WRITING", "Machine", "WorkloadResult", "get"]
