"""`mtlbench report`: damaged folders are named and skipped; the HTML page opens with every table and plot."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlbench.cli import app
from mtlbench.report.build import write_report
from mtlbench.results import update_index
from tests.report.fixtures import thyroid_grid, write_run


def damaged_grid(runs: Path) -> dict[str, str]:
    """A good grid plus a corrupt, a half-written and a foreign folder; returns folder → reason."""
    good = thyroid_grid(runs)
    for folder in good:
        update_index(runs, {"run_id": folder.name.rsplit("-", 1)[1], "task": "thyroid", "path": str(folder)})
    corrupt = write_run(runs, "thyroid", "pcgrad", "corrupt0001", {"test": {"dice": 0.5}})
    (corrupt / "result.json").write_text('{"run_id": "corrupt0001", "metrics": {"test": {"dice": 0.')
    half = runs / "thyroid" / "rlar-unet_small-halfwritten"
    half.mkdir()
    (half / "result.json").write_bytes(b"\x00\x00\x00")
    foreign = runs / "thyroid" / "someone-elses-folder"
    foreign.mkdir()
    (foreign / "result.json").write_text('{"accuracy": 0.9}')
    (runs / "thyroid" / "notes").mkdir()
    return {
        corrupt.name: "cannot be read",
        half.name: "cannot be read",
        foreign.name: "not an mtlbench result",
        "notes": "not a run folder",
    }


def test_damaged_folders_are_named_and_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    expected = damaged_grid(runs)
    index_before = (runs / "index.json").read_bytes()
    result = CliRunner().invoke(app, ["report", "--runs", str(runs), "--format", "md,csv", "--no-plots"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == len(expected)
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in skipped), (name, skipped)
    assert "thyroid: 6 rows from 18 runs" in result.output
    assert (runs / "index.json").read_bytes() == index_before  # the report never writes the index
    (runs / "index.json").write_text("[{")  # a corrupt index is reported; the folders are still read
    # runs/report (the first report's output) is not taken for a task folder
    again = CliRunner().invoke(app, ["report", "--runs", str(runs), "--format", "csv", "--no-plots"])
    assert again.exit_code == 0 and "index cannot be read" in again.output and "18 runs" in again.output
    assert (
        len([line for line in again.output.splitlines() if line.startswith("skipped:")]) == len(expected) + 1
    )


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    empty = CliRunner().invoke(app, ["report", "--runs", str(tmp_path)])
    assert empty.exit_code == 2 and "error: no finished runs" in empty.output
    bad = CliRunner().invoke(app, ["report", "--runs", str(tmp_path), "--format", "pdf"])
    assert bad.exit_code == 2 and "error: unknown format" in bad.output


def test_html_page_in_headless_chromium(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    thyroid_grid(runs)
    for i, (w, dice, f1) in enumerate([((2.0, 0.5, 0.5), 0.9, 0.3), ((0.5, 2.0, 0.5), 0.5, 0.7)]):
        task_args = {"lambda_seg": w[0], "lambda_cls": w[1], "lambda_clin": w[2]}
        write_run(
            runs,
            "thyroid",
            "vanilla",
            f"sweep{i:05d}",
            {"test": {"dice": dice, "f1": f1}},
            task_args=task_args,
        )
    out = write_report(runs, tmp_path / "report")
    page = tmp_path / "report" / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained, nothing fetched
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text)
    assert [alt for alt, _ in images] == out.figures
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    captions = " ".join(out.figures)
    for kind in (
        "metrics on test",
        "vs step time",
        "confusion matrices",
        "training curves",
        "critical-difference",
    ):
        assert kind in captions
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: apt-get install chromium (the page itself was checked above)")
    shot = tmp_path / "report.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="leaderboard"') == 1 and dom.stdout.count("<img") == len(out.figures)
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1600,3000", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1600) and pixels.std() > 0.05  # a rendered page, not a blank one
