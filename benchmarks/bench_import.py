"""Import against tshark: CPU time and wall time from paired runs, and peak memory.

Three real captures, one per format, are tiled (times shifted) to N records:

  usbmon 189 pcap    the Wireshark wiki's usb_memory_stick.pcap (Linux, a FAT16 stick)
  USBPcap 249 pcapng ajbanjara__USBMSC-USBPcap.pcapng (Windows 10, an exFAT Kingston stick)
  usbmon 220 pcapng  ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng (Linux, FAT12 on
                     an ST-LINK's mass-storage interface, a firmware file written)

``tests/tiling.py`` tiles classic pcap only, so the two pcapng captures go through
``editcap -F pcap`` (their records unchanged, one interface each), are tiled, and come
back with ``editcap -F pcapng``: the files read are pcapng, framed as pcapng blocks.

Each pair runs ``usbtrace import`` (file attribution on) and the peer, alternating which
goes first; usbtrace is run a third time with ``--no-files`` for attribution's cost.
The peer is ``tshark -T fields`` decoding the SCSI fields the cross-check tests use.

Whether the import forks its inserter is decided per run from a tenth of a second of
/proc/stat, and a forked inserter costs the tree more CPU (pickling the rows and the
pipe: 1 to 2 s per million records with a core each, 4 to 5 s on a shared machine): two
runs that decided differently would count that as attribution.
So the first usbtrace run of a pair decides as an import does, and the second is made to
store the same way (the wrapper sets ``importing.spare_core``): attribution's cost
compares like with like.
``--storing here`` makes every import store in its own process, which is what an import
does when no core is free: its CPU against tshark's is the one-core comparison.
``--storing fork`` makes every import fork its inserter.

CPU is the whole process tree's user+sys: ``os.wait4`` on the command, whose figures
include every descendant it waited for (usbtrace's forked inserter).  Per pair the ratio
usbtrace/tshark; reported: the median ratio with its min-max over the pairs.  Wall time
means something only on an idle machine: the load average is printed beside it.

Whether usbtrace forked its inserter (it does only where a core is free: see
``importing.spare_core``) is told by that child's peak RSS, and counted.

Peak memory: usbtrace's import runs in a wrapper that prints its own peak RSS
(``RUSAGE_SELF``) and its children's (``RUSAGE_CHILDREN``: the inserter, its only
child); their sum bounds the tree's peak from above (the two peaks need not coincide).
tshark is one process: ``ru_maxrss`` from ``wait4``.  As the forked inserter shares the
parent's pages, the benchmark also samples the tree's proportional set size (PSS, shared
pages counted once in all) from /proc every quarter second, and reports its peak.

usbtrace is byte-compiled first (``compileall``), as ``pip install`` leaves it: where
bytecode is never written (``PYTHONDONTWRITEBYTECODE``, a read-only tree) every run
would compile some fifty modules again, about 0.1 s of CPU that an installed usbtrace
never spends.

``--instructions`` measures attribution's cost in instructions instead: each format's
import runs once with file attribution and once without, in one process, under
valgrind's callgrind, which counts the instructions the process executes, and so does
tshark on the same file.  The count is the same from run to run, whatever else the
machine does, where CPU seconds on the 2-core build machine move by a fifth between two
runs of the same command (a tenth of a second of difference per 200,000 records cannot
be told from noise there).  What it
leaves out: the kernel's work (the writes, page faults), and how many of those
instructions run a cycle, which differs between the interpreter's loop and SQLite's C,
and between usbtrace and tshark.  Under valgrind, OpenSSL cannot use the CPU's SHA
extensions and hashes in portable code, some 28 instructions a byte: the duplicate
check's SHA-256 of the file is counted apart, and the ratio is also given without it.
Callgrind runs about fifty times slower: 200,000 records take some two minutes a run.

Run:  python benchmarks/bench_import.py [--records 1000000] [--big] [--pairs 3]
          [--formats 189,249,220] [--keep DIR]
      python benchmarks/bench_import.py --instructions --records 200000
``--big`` adds a 3M-record size (memory must stay flat).  ``--keep DIR`` tiles the
captures into DIR and keeps them, and uses those already there (tiling costs minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from benchmarks.callgrind import instructions  # noqa: E402
from tests.tiling import tile  # noqa: E402

CAPTURES = ROOT.parent / "shared" / "captures"
FORMATS = {
    "189": ("usbmon 189 pcap", "ajbanjara__usb_memory_stick.pcap", "pcap"),
    "249": ("USBPcap 249 pcapng", "ajbanjara__USBMSC-USBPcap.pcapng", "pcapng"),
    "220": ("usbmon 220 pcapng", "ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng",
            "pcapng"),
}
TSHARK_FIELDS = ("usbms.dCBWTag", "scsi_sbc.opcode", "scsi.spc.opcode", "scsi_sbc.rdwr10.lba",
                 "scsi_sbc.rdwr10.xferlen", "usbms.dCSWStatus")
PSS_EVERY = 0.25  # seconds between samples of the tree's PSS
# the import in a wrapper that reports the peak RSS of itself and of its inserter
WRAPPER = ("import os, resource, sys\n"
           "import usbtrace.importing\n"
           "from usbtrace.cli import main\n"
           "store = os.environ.get('BENCH_STORING')  # 'fork' or 'here': as another run did\n"
           "if store:\n"
           "    usbtrace.importing.spare_core = lambda: store == 'fork'\n"
           "sys.argv = ['usbtrace', 'import', '-q', *sys.argv[1:]]\n"
           "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
           "me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
           "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
           "print('rss', me, kids, file=sys.stderr)\n"
           "sys.exit(code)\n")


@dataclass
class Run:
    cpu: float  # user+sys of the process tree, seconds
    wall: float
    rss_kib: tuple[int, ...]  # peak RSS of each process measured
    pss_kib: int = 0  # the tree's sampled peak PSS


@dataclass
class Runs:
    ours: list[Run] = field(default_factory=list)
    plain: list[Run] = field(default_factory=list)  # --no-files
    peer: list[Run] = field(default_factory=list)


def tree_pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` and its descendants (pages two processes
    share count half to each), from /proc; 0 where there is none."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f
                               if line.startswith("Pss:")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


class PssSampler(threading.Thread):
    """The peak of ``tree_pss_kib`` sampled every ``PSS_EVERY`` seconds while a command
    runs: the tree's memory without counting shared pages twice (a peak between two
    samples can be missed)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(PSS_EVERY):
            self.peak = max(self.peak, tree_pss_kib(self.pid))


def measured(args: list[str], env: dict[str, str] | None = None) -> tuple[Run, str]:
    """Run ``args``; CPU and peak RSS from ``wait4`` (the tree it waited for)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    sampler = PssSampler(proc.pid)
    sampler.start()
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    sampler.done.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{args[0]} failed ({proc.returncode}): {err.strip()[-500:]}")
    return Run(usage.ru_utime + usage.ru_stime, wall, (usage.ru_maxrss,), sampler.peak), err


def remove_database(db: Path) -> None:
    """The database file a run left, with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def run_usbtrace(path: Path, db: Path, *extra: str, storing: str | None = None) -> Run:
    """One import; ``storing`` ('fork' or 'here') overrides its own decision."""
    remove_database(db)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BENCH_STORING", None)
    if storing is not None:
        env["BENCH_STORING"] = storing
    run, err = measured([sys.executable, "-c", WRAPPER, str(path), "--db", str(db), *extra],
                        env)
    line = next(x for x in reversed(err.splitlines()) if x.startswith("rss "))
    me, kids = (int(v) for v in line.split()[1:])
    run.rss_kib = (me, kids) if kids else (me,)
    return run


def run_tshark(path: Path) -> Run:
    args = ["tshark", "-r", str(path), "-T", "fields"]
    for name in TSHARK_FIELDS:
        args += ["-e", name]
    return measured(args)[0]


def make_capture(key: str, tmp: Path, records: int) -> Path:
    """The format's capture tiled to ``records`` (see the module docstring); one tiled
    before into ``tmp`` is used as it is."""
    _, name, container = FORMATS[key]
    source = CAPTURES / name
    if not source.exists():
        sys.exit(f"{source}: not found")
    tiled = tmp / f"{key}-{records}.pcap"
    made = tmp / f"{key}-{records}.{container}"
    if made.exists():
        return made
    if container == "pcap":
        tile(source, tiled, records)
        return tiled
    plain = tmp / f"{key}-source.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(source), str(plain)], check=True)
    tile(plain, tiled, records)
    out = tmp / f"{key}-{records}.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(tiled), str(out)], check=True)
    tiled.unlink()
    plain.unlink()
    return out


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """Median (min-max)."""
    return (fmt.format(statistics.median(values)) + " (" + fmt.format(min(values)) + "-" +
            fmt.format(max(values)) + ")")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def bench(key: str, path: Path, pairs: int, tmp: Path, storing: str = "auto") -> None:
    label = FORMATS[key][0]
    records = path.stem.split("-")[-1]
    how = {"auto": "", "here": ", inserter in the same process",
           "fork": ", inserter forked"}[storing]
    print(f"{label}, {int(records):,} records ({path.stat().st_size / 1e6:.0f} MB), "
          f"{pairs} pairs{how}; load average before {load()}", flush=True)
    runs = Runs()
    db = tmp / "bench.db"
    for i in range(pairs):
        # alternate the order: whoever runs first meets a colder page cache
        order = ["ours", "plain", "peer"] if i % 2 == 0 else ["peer", "plain", "ours"]
        # the pair's first import decides (or --storing); the second follows
        decided: str | None = None if storing == "auto" else storing
        for who in order:
            if who == "peer":
                runs.peer.append(run_tshark(path))
                continue
            run = run_usbtrace(path, db, *(["--no-files"] if who == "plain" else []),
                               storing=decided)
            (runs.ours if who == "ours" else runs.plain).append(run)
            decided = "fork" if len(run.rss_kib) > 1 else "here"
    remove_database(db)
    cpu_ratio = [o.cpu / p.cpu for o, p in zip(runs.ours, runs.peer)]
    wall_ratio = [o.wall / p.wall for o, p in zip(runs.ours, runs.peer)]
    attribution = [(o.cpu / n.cpu - 1) * 100 for o, n in zip(runs.ours, runs.plain)]
    print(f"  CPU s    usbtrace {spread([r.cpu for r in runs.ours])}   "
          f"tshark {spread([r.cpu for r in runs.peer])}")
    print(f"           usbtrace/tshark CPU {spread(cpu_ratio)}")
    print(f"  wall s   usbtrace {spread([r.wall for r in runs.ours])}   "
          f"tshark {spread([r.wall for r in runs.peer])}")
    print(f"           usbtrace/tshark wall {spread(wall_ratio)}   (load average after "
          f"{load()})")
    print(f"  attribution: CPU without it {spread([r.cpu for r in runs.plain])} s; it adds "
          f"{spread(attribution, '{:.0f}')} % (a few pairs of CPU seconds cannot resolve a "
          "tenth: --instructions counts it the same every run)")
    ours_rss = max(sum(r.rss_kib) for r in runs.ours + runs.plain) / 1024
    parts = max(runs.ours + runs.plain, key=lambda r: sum(r.rss_kib)).rss_kib
    forked = sum(len(r.rss_kib) > 1 for r in runs.ours + runs.plain)
    print(f"  usbtrace forked its inserter in {forked} of {len(runs.ours + runs.plain)} runs "
          "(only where a core was free for it)")
    print(f"  peak RSS usbtrace {ours_rss:.0f} MiB for the tree "
          f"({' + '.join(f'{k / 1024:.0f}' for k in parts)}: sum of each process's peak), "
          f"tshark {max(r.rss_kib[0] for r in runs.peer) / 1024:.0f} MiB")
    print(f"  peak PSS (sampled every {PSS_EVERY} s) usbtrace "
          f"{max(r.pss_kib for r in runs.ours + runs.plain) / 1024:.0f} MiB for the tree, "
          f"tshark {max(r.pss_kib for r in runs.peer) / 1024:.0f} MiB", flush=True)


HASH_ONLY = ("import sys\nfrom pathlib import Path\nfrom usbtrace.capture.source import "
             "sha256_of\nif sys.argv[1] != '-':\n    sha256_of(Path(sys.argv[1]))\n")


def bench_instructions(key: str, path: Path, tmp: Path) -> None:
    """Attribution's share of an import, and the import against tshark, in instructions
    (see the module docstring)."""
    label = FORMATS[key][0]
    records = int(path.stem.split("-")[-1])
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_STORING="here")
    db = tmp / "bench.db"
    counts = {}
    for mode, extra in (("with", []), ("without", ["--no-files"])):
        remove_database(db)
        counts[mode] = instructions([sys.executable, "-c", WRAPPER, str(path), "--db", str(db),
                                     *extra], env)[0]
    remove_database(db)
    peer = ["tshark", "-r", str(path), "-T", "fields"]
    for name in TSHARK_FIELDS:
        peer += ["-e", name]
    counts["tshark"] = instructions(peer, env)[0]
    # the duplicate check's SHA-256 of the file: the hash alone, less the same start-up
    hashing = instructions([sys.executable, "-c", HASH_ONLY, str(path)], env)[0] - \
        instructions([sys.executable, "-c", HASH_ONLY, "-"], env)[0]
    with_, without, tshark = counts["with"], counts["without"], counts["tshark"]
    added = with_ - without
    m = 1e6
    print(f"{label}, {records:,} records, one process (millions of instructions):\n"
          f"  usbtrace {with_ / m:,.0f} with file attribution, {without / m:,.0f} without; "
          f"attribution adds {added / m:,.0f}, {added / without * 100:.1f}% "
          f"({added / (without - hashing) * 100:.1f}% with the SHA-256 set apart)\n"
          f"  tshark {tshark / m:,.0f}; usbtrace/tshark {with_ / tshark:.3f} "
          f"({without / tshark:.3f} without attribution)\n"
          f"  of usbtrace's, the SHA-256 of the file {hashing / m:,.0f}, counted in OpenSSL's "
          f"portable code (valgrind's CPU has no SHA extensions); without it "
          f"usbtrace/tshark {(with_ - hashing) / tshark:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="also 3M records")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="comma-separated linktypes among 189, 249, 220")
    parser.add_argument("--storing", choices=("auto", "here", "fork"), default="auto",
                        help="where every import stores its rows: decided per pair as an "
                             "import decides (auto), in the decoding process (here: what "
                             "runs on one core), or in a forked inserter (fork)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="tile the captures into DIR and keep them (reused when there)")
    parser.add_argument("--instructions", action="store_true",
                        help="attribution's cost in instructions (callgrind), not seconds")
    args = parser.parse_args()
    keys = [k.strip() for k in args.formats.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FORMATS]
    if unknown:
        print(f"--formats: unknown {', '.join(unknown)} (189, 249, 220)", file=sys.stderr)
        sys.exit(2)
    if args.pairs < 1 or args.records < 1:
        print("--pairs and --records must be at least 1", file=sys.stderr)
        sys.exit(2)
    for tool in ("tshark", "editcap"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: it is the peer (and tiles pcapng)", file=sys.stderr)
            sys.exit(2)
    if args.instructions and shutil.which("valgrind") is None:
        print("valgrind is not installed: --instructions counts with its callgrind tool",
              file=sys.stderr)
        sys.exit(2)
    sizes = [args.records] + ([3 * args.records] if args.big else [])
    if not args.instructions:
        print(f"{os.cpu_count()} CPUs; CPU = user+sys of the whole process tree; ratios are "
              "usbtrace/tshark per pair, median (min-max)\n")
    if args.keep is not None and not args.keep.is_dir():
        print(f"--keep: {args.keep} is not a directory", file=sys.stderr)
        sys.exit(2)
    # as installed: bytecode written once, not compiled again by every run
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "usbtrace")],
                   check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for key in keys:
            for n in sizes:
                path = make_capture(key, args.keep or tmp, n)
                if args.instructions:
                    bench_instructions(key, path, tmp)
                else:
                    bench(key, path, args.pairs, tmp, args.storing)
                if args.keep is None:
                    path.unlink()
                print()


if __name__ == "__main__":
    main()
