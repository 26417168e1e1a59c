"""The reference site in build/docs (make docs), looked at and not only built.

Every page's links and images resolve inside the site (a link to a missing page, anchor,
picture or stylesheet fails); headless Chromium opens the main pages and the plan pictures,
with no console message and a screenshot that shows something: the pictures' screenshots
must show both the native and the parallel colour. Run by `make docs` after the build.
"""

from __future__ import annotations

import html.parser
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from ansible_collections.mv6.transition.plugins.module_utils import _diagram

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "docs"
# The screenshots stay, for a person to look at too: build/docs-screenshots/*.png.
SHOTS = ROOT / "build" / "docs-screenshots"

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not (SITE / "index.html").exists(), reason="run make docs first"),
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# make docs sets it: there, a machine without Chromium fails the tier instead of skipping
# the browser checks.
if os.environ.get("MV6_DOCS_REQUIRE_BROWSER") == "1" and CHROMIUM is None:
    raise RuntimeError("MV6_DOCS_REQUIRE_BROWSER=1 but chromium is not installed (setup.sh)")
PAGES = [
    "index.html",
    "guide/diagram.html",
    "guide/README.html",
    "playbooks/site.html",
    "collection/index.html",
    "collection/address_plan_module.html",
    "collection/plan_diagram_filter.html",
    "collection/guest_role.html",
]


class Links(html.parser.HTMLParser):
    """The ids a page defines and the links and resources it refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag in ("a", "span", "section", "div") else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and attrs.get("rel") == "canonical"):
                self.refs.append(attrs[key])


def parsed(page: Path, cache: dict) -> Links:
    if page not in cache:
        links = Links()
        links.feed(page.read_text(encoding="utf-8"))
        cache[page] = links
    return cache[page]


def test_every_internal_link_and_resource_resolves():
    cache: dict = {}
    pages = sorted(SITE.rglob("*.html"))
    assert len(pages) > 40, "the site is missing pages"
    broken, external = [], set()
    for page in pages:
        for ref in parsed(page, cache).refs:
            url = urlsplit(ref)
            if url.scheme in ("http", "https", "mailto"):
                external.add(url.netloc)
                continue
            assert not url.scheme, f"{page}: {ref}"
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or SITE.resolve() not in target.parents:
                broken.append(f"{page.relative_to(SITE)}: {ref} (no such file in the site)")
                continue
            if (
                url.fragment
                and target.suffix == ".html"
                and unquote(url.fragment) not in parsed(target, cache).ids
            ):
                broken.append(f"{page.relative_to(SITE)}: {ref} (no such anchor)")
    assert not broken, "\n".join(broken[:40])
    # No page loads anything from outside: the theme's links to ansible.com are links only.
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert '<script src="http' not in text and 'rel="stylesheet" href="http' not in text


def png_pixels(path: Path) -> tuple[int, int, list]:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium writes): width, height, rows of pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append([tuple(line[i : i + 3]) for i in range(0, stride, channels)])
        previous = line
    return width, height, rows


def look(url: str, shot: Path) -> list[str]:
    """Open url in headless Chromium, save a screenshot, return the console messages."""
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="mv6-docs-chromium-") as profile:
        proc = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # as root
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1280,1000",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": profile},
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def colours(rows: list) -> set:
    return {pixel for row in rows[::2] for pixel in row[::2]}


def near(found: set, hex_colour: str, tolerance: int = 24) -> bool:
    want = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return any(all(abs(a - b) <= tolerance for a, b in zip(p, want, strict=True)) for p in found)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/setup.sh installs it)")
@pytest.mark.parametrize("page", PAGES)
def test_pages_render_without_console_messages(page):
    assert (SITE / page).is_file(), page
    shot = SHOTS / (page.replace("/", "_").removesuffix(".html") + ".png")
    assert look((SITE / page).as_uri(), shot) == []
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1280, 1000)
    assert len(colours(rows)) > 20, f"{page} rendered nearly blank"


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/setup.sh installs it)")
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "docs/pictures").glob("*.svg")))
def test_plan_pictures_render_in_both_colours(name):
    # Drawn in a page (_images) or linked from the table of docs/diagram.md (_downloads).
    carried = sorted(SITE.glob(f"_images/{name}")) + sorted(SITE.glob(f"_downloads/*/{name}"))
    assert carried, f"the site does not carry {name}"
    picture = carried[0]
    assert picture.read_bytes() == (ROOT / "docs/pictures" / name).read_bytes()
    shot = SHOTS / f"picture_{name.removesuffix('.svg')}.png"
    assert look(picture.as_uri(), shot) == []
    _w, _h, rows = png_pixels(shot)
    # Below the legend (whose two squares alone hold both colours): the drawing itself.
    found = colours(rows[130:])
    assert near(found, _diagram.NATIVE) and near(found, _diagram.PARALLEL), name
