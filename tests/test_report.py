"""usbtrace report: one offline HTML page that headless Chromium draws without an error."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture

PLOTS = ["plot-lba", "plot-throughput", "plot-srt"]
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                        "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium; "
    ".ci/run installs it where it can)")

# Observes the page: errors and console.error calls, and what each plot drew.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' +
  e.reason));
const __error = console.error;
console.error = (...a) => { window.__errors.push('console: ' + a.join(' ')); __error(...a); };
window.addEventListener('load', () => setTimeout(() => {
  const plots = {};
  for (const p of document.querySelectorAll('.plotly-graph-div')) {
    plots[p.id] = {drawn: p.classList.contains('js-plotly-plot'),
                   svg: p.querySelectorAll('.main-svg').length,
                   marks: p.querySelectorAll('.point').length};
  }
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({errors: window.__errors, plots: plots});
  document.body.appendChild(out);
}, 300));
</script>"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    db = folder / "r.db"
    database = Database(db)
    import_capture(database, shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    import_capture(database, shared_capture("ajbanjara__usb_memory_stick.pcap"))
    database.close()
    for session in ("1", "2"):
        code, out, err = invoke("report", session, "--db", str(db), "-o",
                                str(folder / f"report{session}.html"))
        assert code == 0 and "report of session" in out, err
    return folder


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND",  # offline
         "--virtual-time-budget=15000", *args],
        capture_output=True, text=True, timeout=120)


def test_the_page_is_self_contained(report: Path) -> None:
    page = (report / "report1.html").read_text()
    assert not re.search(r"<script[^>]+src=", page) and "<link" not in page
    assert page.count("Plotly.newPlot") == len(PLOTS)
    for text in ("QEMU USB HARDDRIVE", "64.0 MiB", "FAT16", "/big-renamed.bin", "write_10",
                 "Every command ended good."):
        assert text in page, text
    errors = (report / "report2.html").read_text()
    assert "unit_attention" in errors and "REQUEST SENSE #3" in errors


@needs_chromium
@pytest.mark.parametrize("name", ["report1.html", "report2.html"])
def test_chromium_draws_every_plot_without_an_error(report: Path, name: str) -> None:
    probe = report / f"probe-{name}"
    page = (report / name).read_text()
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    result = chromium("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["errors"] == []
    assert sorted(seen["plots"]) == sorted(PLOTS)
    for plot, state in seen["plots"].items():
        assert state["drawn"] and state["svg"] > 0 and state["marks"] > 0, (plot, state)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def png_rows_differ(path: Path) -> int:
    """How many distinct pixel rows the image has: a blank page has one."""
    data = path.read_bytes()
    width, height = png_size(path)
    at, idat = 8, b""
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + length]
        at += 12 + length
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    return len({raw[i * stride + 1:(i + 1) * stride] for i in range(height)})


@needs_chromium
def test_screenshot_shows_the_plots(report: Path) -> None:
    shot = report / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,2600",
                      (report / "report1.html").as_uri())
    assert shot.exists(), result.stderr[-2000:]
    assert png_size(shot) == (1200, 2600)
    assert png_rows_differ(shot) > 500  # text, axes and points, not an empty page


def test_bad_input_is_one_line_and_writes_nothing(report: Path) -> None:
    db = str(report / "r.db")
    cases = [["report", "9", "--db", db, "-o", str(report / "x.html")],
             ["report", "1", "--db", db, "-o", db, "--force"],
             ["report", "1", "--db", db, "-o", str(report / "report1.html")],
             ["timeline", "1", "--db", db, "-o", str(report / "none" / "t.json")],
             ["timeline", "0", "--db", db, "-o", str(report / "t.json")],
             ["extract", "1", "--db", db, "-o", str(report), "--force"]]
    before = sorted(p.name for p in report.iterdir())
    for args in cases:
        code, _, err = invoke(*args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in report.iterdir()) == before
