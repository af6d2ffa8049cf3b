"""Import speed against tshark and a bare struct loop, and peak memory as files grow.

A real capture (default: the Wireshark wiki's usb_memory_stick.pcap) is tiled,
with times shifted, to N records.  For each size, one run of each:

  floor     a bare Python loop framing the pcap records and unpacking each usbmon
            header with struct: no pairing, no decoding, no storage
  usbtrace  `usbtrace import` into a fresh SQLite file (a subprocess; its peak RSS),
            with file attribution, and again with --no-files
  tshark    `tshark -T fields` decoding the SCSI fields the cross-check test uses

Run:  python benchmarks/bench_import.py [--records 1000000] [--capture FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.tiling import tile  # noqa: E402

DEFAULT = HERE.parent.parent / "shared" / "captures" / "ajbanjara__usb_memory_stick.pcap"


def floor(path: Path) -> float:
    record = struct.Struct("<IIII")
    usbmon = struct.Struct("<QBBBBHBBqiiII8s")
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        f.read(24)
        read = f.read
        n = 0
        while True:
            head = read(16)
            if len(head) < 16:
                break
            caplen = record.unpack(head)[2]
            usbmon.unpack_from(read(caplen))
            n += 1
    return time.perf_counter() - t0


def run_import(path: Path, db: Path, *extra: str) -> tuple[float, int]:
    code = ("import resource, sys; from usbtrace.cli import main; "
            "sys.argv = ['usbtrace', 'import', '-q', *sys.argv[1:]]\n"
            "try:\n main()\nexcept SystemExit:\n pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(path), "--db", str(db), *extra],
                          capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    return elapsed, int(proc.stderr.strip().splitlines()[-1])


def run_tshark(path: Path) -> float | None:
    if shutil.which("tshark") is None:
        return None
    args = ["tshark", "-r", str(path), "-T", "fields"]
    for field in ("usbms.dCBWTag", "scsi_sbc.opcode", "scsi.spc.opcode", "scsi_sbc.rdwr10.lba",
                  "scsi_sbc.rdwr10.xferlen", "usbms.dCSWStatus"):
        args += ["-e", field]
    t0 = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--capture", type=Path, default=DEFAULT)
    args = parser.parse_args()
    if not args.capture.exists():
        sys.exit(f"{args.capture}: not found (pass --capture)")
    sizes = [args.records // 4, args.records]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"tiling {args.capture.name}; rates in records/s, one run each")
        for n in sizes:
            path = Path(tmp) / f"tiled-{n}.pcap"
            tile(args.capture, path, n)
            mb = path.stat().st_size / 1e6
            t_floor = floor(path)
            t_ours, rss_kb = run_import(path, Path(tmp) / f"{n}.db")
            t_plain, _ = run_import(path, Path(tmp) / f"{n}-plain.db", "--no-files")
            t_tshark = run_tshark(path)
            print(f"{n:>9} records ({mb:.0f} MB):")
            print(f"  floor     {n / t_floor:>10,.0f}/s")
            print(f"  usbtrace  {n / t_ours:>10,.0f}/s   peak RSS {rss_kb / 1024:.0f} MiB")
            print(f"  (without file attribution {n / t_plain:,.0f}/s: attribution costs "
                  f"{(t_ours / t_plain - 1) * 100:.0f}%)")
            if t_tshark is not None:
                print(f"  tshark    {n / t_tshark:>10,.0f}/s   usbtrace/tshark speed "
                      f"{t_tshark / t_ours:.2f}x")
            else:
                print("  tshark    (not installed)")
            os.remove(path)


if __name__ == "__main__":
    main()
