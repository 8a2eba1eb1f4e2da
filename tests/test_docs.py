"""The docs site in a real browser: build `_docs/` (tools/build_docs.py) if it is missing or older than its
sources, serve it on localhost and open every page in headless Chromium (Selenium + Debian's chromedriver).

Asserts per page: HTTP 200 for the page and for everything the browser loads from the site, no broken
same-site links (file and `#anchor`), no missing images (`naturalWidth > 0`), no request leaving localhost
(the site works offline), no JS console errors; that search works; that library pages carry API entries.
Screenshots of the home page, a library page and a pipeline page go to `_docs_screens/` (self-ignored by git).

A site that `make docs` built and that is newer than its sources (notebooks, docs/, the build script, the package,
runs/docs-smoke/) is tested as it is; otherwise it is rebuilt with the pipeline pages showing the session's smoke
run (the `smoke_run` fixture of tests/conftest.py, shared with tests/test_pipeline.py; unexecuted stages if that
fails). Chromium missing -> skip (CI: .ci/install-browser.sh).
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import urlopen

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_docs"
SCREENS = ROOT / "_docs_screens"
CHROMIUM = os.environ.get("EHR_RLVR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EHR_RLVR_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def _sources() -> list[Path]:
    pats = [("nbs", "**/*.ipynb"), ("docs", "**/*"), ("ehr_rlvr", "**/*.py"), ("runs/docs-smoke", "*.ipynb")]
    out = [ROOT / "tools" / "build_docs.py", ROOT / "settings.ini"]
    for d, pat in pats:
        out += [p for p in (ROOT / d).glob(pat) if p.is_file()]
    return [p for p in out if p.exists()]


def _stale() -> bool:
    idx = SITE / "index.html"
    if not idx.exists():
        return True
    return max(p.stat().st_mtime for p in _sources()) > idx.stat().st_mtime


@pytest.fixture(scope="module")
def site(request) -> Path:
    for mod in ("sphinx", "myst_nb", "sphinx_book_theme"):
        pytest.importorskip(mod, reason=f"{mod} missing: install the docs extras (settings.ini docs_requirements)")
    if _stale():
        args = [sys.executable, str(ROOT / "tools" / "build_docs.py"), "--jobs", "2", "--strict"]  # warnings fail
        try:  # the session's smoke run (tests/conftest.py), shared with tests/test_pipeline.py
            args += ["--run-dir", str(request.getfixturevalue("smoke_run"))]
        except (Exception, pytest.skip.Exception, pytest.fail.Exception) as e:  # no fixture, or the run failed/skipped
            warnings.warn(f"docs: pipeline pages without smoke outputs ({type(e).__name__}: ...{str(e)[-400:]})")
        t0 = time.time()
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        print(f"docs built in {time.time() - t0:.0f} s")
    assert (SITE / "index.html").exists()
    return SITE


class _Handler(http.server.SimpleHTTPRequestHandler):
    log: list[tuple[str, int]] = []

    def log_request(self, code="-", size="-"):
        type(self).log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *a):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # browser cancelled a load
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server(site):
    handler = type("H", (_Handler,), {"log": []})
    httpd = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler.log
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"no Chromium at {CHROMIUM} / chromedriver at {CHROMEDRIVER}: run .ci/install-browser.sh "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing (dev_requirements)")
    from selenium.webdriver.chrome.service import Service
    prof = tempfile.mkdtemp(prefix="ehr-rlvr-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={prof}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(prof, ignore_errors=True)


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if "_static" not in p.parts)


_ids_cache: dict[Path, set[str]] = {}


def _ids(f: Path) -> set[str]:
    if f not in _ids_cache:
        html = f.read_text(encoding="utf-8", errors="replace")
        _ids_cache[f] = set(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", html))
    return _ids_cache[f]


_PAGE_JS = """
const imgs = [...document.images].map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth]);
const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
const res = performance.getEntriesByType('resource').map(r => r.name);
return {imgs, links, res, title: document.title, api: document.querySelectorAll('div.api-doc').length,
        code: document.querySelectorAll('div.cell_input, div.highlight').length};
"""


def _wait_ready(drv, timeout=30):
    t0 = time.time()
    while drv.execute_script("return document.readyState") != "complete":
        assert time.time() - t0 < timeout, f"page did not finish loading: {drv.current_url}"
        time.sleep(0.05)


def test_site_pages_links_images(site, server, browser):
    base, reqlog = server
    pages = _pages(site)
    assert "index.html" in pages and any(p.startswith("pipeline/") for p in pages), pages
    problems, n_links, n_imgs, api_pages = [], 0, 0, []
    for page in pages:
        url = urljoin(base, page)
        with urlopen(url) as r:
            assert r.status == 200, f"{page}: HTTP {r.status}"
        browser.get(url)
        _wait_ready(browser)
        info = browser.execute_script(_PAGE_JS)
        if info["api"]:
            api_pages.append(page)
        for src, complete, width in info["imgs"]:
            n_imgs += 1
            if not complete or width == 0:
                problems.append(f"{page}: image not loaded: {src}")
        for r in info["res"]:
            if not r.startswith(base) and not r.startswith("data:"):
                problems.append(f"{page}: request leaves the site (offline site must not need it): {r}")
        for href in info["links"]:
            u = urlsplit(href)
            if u.scheme not in ("http", "https") or not href.startswith(base):
                continue
            n_links += 1
            path = unquote(u.path)[len(urlsplit(base).path):] or "index.html"
            f = site / path
            if f.is_dir():
                f = f / "index.html"
            if not f.is_file():
                problems.append(f"{page}: broken link {href}")
            elif u.fragment and f.suffix == ".html" and unquote(u.fragment) not in _ids(f):
                problems.append(f"{page}: link to a missing anchor {href}")
        for e in browser.get_log("browser"):
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]:
                problems.append(f"{page}: console error: {e['message'][:200]}")
    bad = [(p, c) for p, c in reqlog if c >= 400 and "favicon.ico" not in p]
    problems += [f"HTTP {c} for {p}" for p, c in bad]
    assert not problems, f"{len(problems)} problems on {len(pages)} pages:\n" + "\n".join(problems[:60])
    print(f"{len(pages)} pages, {n_links} same-site links, {n_imgs} images checked")
    # every library notebook with exports has API entries rendered
    for name in ("core.html", "rewards.html", "metrics.html"):
        if (site / name).exists():
            assert name in api_pages, f"{name}: no show_doc entries (div.api-doc)"


def test_search_works(site, server, browser):
    base, _ = server
    browser.get(urljoin(base, "search.html?q=manifest"))
    _wait_ready(browser)
    t0 = time.time()
    hits = []
    while time.time() - t0 < 30 and not hits:
        hits = browser.execute_script("return [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
        time.sleep(0.2)
    assert hits, "search for 'manifest' returned no results"


def test_screenshots(site, server, browser):
    base, _ = server
    SCREENS.mkdir(exist_ok=True)
    (SCREENS / ".gitignore").write_text("*\n")
    stages = sorted(p.relative_to(site).as_posix() for p in (site / "pipeline").glob("*.html"))
    # the pipeline page with the most figures (the first stage when none has any), then its first figure
    n_img = {p: (site / p).read_text(encoding="utf-8").count("<img") for p in stages}
    stage = max(stages, key=lambda p: (n_img[p], -stages.index(p))) if stages else None
    shots = {"index.png": ("index.html", None), "core.png": ("core.html", None), "pipeline.png": (stage, None)}
    if stage and n_img[stage]:
        shots["pipeline_figure.png"] = (stage, "div.cell_output img")
    for fname, (page, sel) in shots.items():
        if page is None or not (site / page).exists():
            continue
        browser.get(urljoin(base, page))
        _wait_ready(browser)
        browser.execute_script("sessionStorage.clear()")  # the theme restores the sidebar scroll of the last page
        browser.refresh()
        _wait_ready(browser)
        if sel:
            browser.execute_script(f"document.querySelector('{sel}').scrollIntoView(); window.scrollBy(0, -150);")
            time.sleep(0.3)
        browser.save_screenshot(str(SCREENS / fname))
        assert (SCREENS / fname).stat().st_size > 10_000, f"{fname}: screenshot looks empty"


def _build_docs_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nbdev_directives_processed(tmp_path):
    "No browser: the build's notebook processing hides/shows what nbdev hides/shows and adds show_doc entries."
    nbformat = pytest.importorskip("nbformat")
    bd = _build_docs_module()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    code = nbformat.v4.new_code_cell
    nb.cells = [nbformat.v4.new_markdown_cell("# core\n> Short description."),
                code("#| default_exp core"),
                code("#| hide\nsecret = 1"),
                code("#| export\ndef run_dir(run_id, root='runs', create=True): ...\ndef _private(): ..."),
                code("#| hide_input\nshown_output_only = 1"),
                code("#| echo: false\nalso_output_only = 1"),
                code("#| hide_output\nno_output = 1"),
                code("x = 1\ny = 2  #| hide_line\nx"),
                code("#| include: false\ngone = 1"),
                code("#| exporti\ninternal = 1"),
                code("show_doc(check_run_id)")]
    p = tmp_path / "00_core.ipynb"
    nbformat.write(nb, p)
    out = bd.process_nb(p)
    srcs = [c.source for c in out.cells]
    assert not any("secret" in s or "gone" in s or "internal" in s or "default_exp" in s for s in srcs), srcs
    assert not any("#|" in s for c in out.cells if c.cell_type == "code" for s in [c.source]), srcs
    exp = next(c for c in out.cells if "def run_dir" in c.source)
    assert exp.cell_type == "code" and not exp.source.startswith("#")
    doc = out.cells[out.cells.index(exp) + 1]
    assert doc.cell_type == "markdown" and doc.source.startswith("### run_dir") and "api-doc" in doc.source, doc.source
    assert "The folder of run" in doc.source  # the docstring of ehr_rlvr.core.run_dir
    assert not any("_private" in c.source for c in out.cells if c.cell_type == "markdown")
    tags = {c.source.split("\n")[0]: c.metadata.get("tags", []) for c in out.cells if c.cell_type == "code"}
    assert tags["shown_output_only = 1"] == ["remove-input"] and tags["also_output_only = 1"] == ["remove-input"]
    assert tags["no_output = 1"] == ["remove-output"]
    assert next(c for c in out.cells if c.source.startswith("x = 1")).source == "x = 1\nx"
    assert out.cells[-1].cell_type == "markdown" and out.cells[-1].source.startswith("### check_run_id")
    assert bd.page_name(Path("nbs/03a_medcalc_formulas.ipynb")) == "medcalc_formulas"
