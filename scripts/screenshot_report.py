"""Render a report page in headless Chromium and save a full-page screenshot, to look at it as a reader would.

    python scripts/screenshot_report.py runs/fmnist-byol-seed0/report/index.html --out shot.png

Needs Debian's ``chromium`` (``apt-get install chromium``) and pillow. Chromium draws a fixed-size
window, so the page is drawn into a tall window and the empty background below it is cropped. Exits
non-zero if Chromium fails or the screenshot is blank.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

BACKGROUND = (246, 247, 249)  # the page's background colour (report STYLE)


def screenshot(page: Path, out: Path, *, width: int = 1400, height: int = 16000, browser: str = "chromium") -> Image.Image:
    executable = shutil.which(browser)
    if executable is None:
        raise SystemExit(f"{browser} not found: apt-get install chromium (or pass --browser)")
    with tempfile.TemporaryDirectory() as profile:
        command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"{browser} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    with Image.open(out) as shot:
        image = shot.convert("RGB")
    content = ImageChops.difference(image, Image.new("RGB", image.size, BACKGROUND)).getbbox()
    if content is None:
        raise SystemExit(f"the screenshot of {page} is blank")
    image = image.crop((0, 0, width, min(height, content[3] + 24)))
    image.save(out)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("--out", type=Path, default=Path("report-screenshot.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--browser", default="chromium")
    args = parser.parse_args()
    image = screenshot(args.page, args.out, width=args.width, browser=args.browser)
    print(f"{args.out}: {image.width}×{image.height}")


if __name__ == "__main__":
    sys.exit(main())
