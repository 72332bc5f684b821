"""Pictures of the HTML report for the README, from real runs on the embedded Ollama.

Runs ``example_project`` ``--runs`` times (3) against the embedded Ollama, each
saved into a temporary storage folder, the first one also writing its report
(``--ollama-cpu-html``); draws the history of the runs with ``pytest-ollama-cpu
report``; and has headless chromium photograph both pages into ``docs/report.png``
and ``docs/report-history.png``, reduced to 256 colours (a page of text and
flat charts loses nothing to it, and the files stay a few hundred kB). The pages
are kept in the temporary folder it prints, to open in a browser.

    .venv/bin/python benchmarks/report_screenshot.py [--runs 3] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from pytest_ollama_cpu.embedded import MODEL_NAME, running

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: CSS pixels: a laptop's width, and enough height for the header, the tests and the
#: first sweeps (the report), or the history's first tests
WINDOW = {"report": (1280, 2000), "report-history": (1280, 1500)}


def photograph(page: Path, picture: Path, size: tuple[int, int], workdir: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None
    raw = workdir / f"{picture.stem}-raw.png"
    subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--window-size={size[0]},{size[1]}",
            f"--user-data-dir={workdir / 'profile'}",
            "--no-first-run",
            f"--screenshot={raw}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(raw) as image:
        image.convert("RGB").quantize(
            colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        ).save(picture, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="saved runs for the history (3)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder of the pictures")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        print("needs Debian's chromium package (apt-get install chromium)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ollama-cpu-docs-"))
    storage, report, history = work / "runs", work / "report.html", work / "history.html"
    with running(ROOT / ".ollama-embedded") as server:
        env = {**os.environ, "OLLAMA_HOST": server.host, "OLLAMA_CPU_MODEL": MODEL_NAME}
        for run in range(1, args.runs + 1):
            command = [
                str(BIN / "pytest"),
                "example_project",
                "--ollama-cpu",
                "-p",
                "no:cacheprovider",
                f"--ollama-cpu-save=example-{run}",
                f"--ollama-cpu-storage={storage}",
            ]
            if run == 1:
                command.append(f"--ollama-cpu-html={report}")
            started = time.monotonic()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            lines = done.stdout.splitlines()
            said = [line for line in lines if line.startswith("ollama-cpu: report written")]
            print(f"run {run}: {lines[-1] if lines else done.stderr[-2000:]}", *said, sep="\n  ")
            print(f"  {time.monotonic() - started:.0f} s in all")
            if done.returncode not in (0, 1):  # a failed test still saves its run
                print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
                return 1
    runs = [str(n) for n in range(1, args.runs + 1)]
    command = [str(BIN / "pytest-ollama-cpu"), "report", *runs, "-o", str(history)]
    subprocess.run([*command, "--storage", str(storage)], check=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for page, name in ((report, "report"), (history, "report-history")):
        picture = out / f"{name}.png"
        photograph(page, picture, WINDOW[name], work)
        print(f"{picture}: {picture.stat().st_size / 1000:.0f} kB (from {page})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
