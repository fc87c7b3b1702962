"""The report rendered by a real browser (headless Debian ``chromium``): every figure decodes to an image with a
non-zero natural size, no script error or console message appears, and the Content-Security-Policy blocks a
script that is not the report's own."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .synthetic_results import N_FULL_IMAGES, full_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")


def render(page: Path, profile: Path) -> tuple[dict[str, str], list[str]]:
    """Load ``page``, let its load handlers run, return the ``<body>`` attributes and the console messages."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return attrs, console


def test_figures_load_without_errors(tmp_path):
    attrs, console = render(full_report(), tmp_path / "profile")
    assert attrs.get("data-images") == str(N_FULL_IMAGES)
    assert attrs.get("data-images-ok") == str(N_FULL_IMAGES)  # complete and naturalWidth > 0
    assert attrs.get("data-errors") == "0"
    assert console == []


def test_csp_blocks_a_foreign_script(tmp_path):
    text = full_report().read_text(encoding="utf-8")
    page = tmp_path / "tampered.html"
    page.write_text(text.replace("</main>", "</main><script>document.body.setAttribute('data-pwned','1')</script>"),
                    encoding="utf-8")
    attrs, console = render(page, tmp_path / "profile")
    assert "data-pwned" not in attrs
    assert attrs.get("data-images-ok") == str(N_FULL_IMAGES)  # the report's own script still ran
    assert any("Content Security Policy" in line for line in console), console
