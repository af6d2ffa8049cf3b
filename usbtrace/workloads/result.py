"""What a workload reports back: bytes moved, data checks, and what it did to files."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FileOperation:
    operation: str  # write, read, rename, delete, mkdir
    path: str
    size: int = 0
    sha256: str = ""
    new_path: str = ""


@dataclass
class WorkloadResult:
    bytes_written: int = 0
    bytes_read: int = 0
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operations: list[FileOperation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches
