#!/usr/bin/env python
"""Build the docs site into `_docs/` offline: nbdev-processed notebooks rendered by Sphinx + myst-nb.

Quarto (nbdev's own renderer) cannot be installed here, so this script does what `nbdev_docs` does up to the
rendering step, with nbdev's own processors where they fit:

* library notebooks `nbs/*.ipynb` (not `_*`, not `index`) are pages with their committed outputs; nbdev
  directives are applied as nbdev applies them (`#| hide`, `#| exporti`, `#| default_exp`, `#| include: false`
  cells dropped; `#| hide_input`/`#| echo: false` hide the code; `#| hide_output`/`#| output: false` hide the
  outputs; `#| hide_line`; `#| filter_stream`), directive lines are removed from the shown code, and every
  public function/class defined in an `#| export`/`#| exports` cell gets a show_doc entry (signature with
  documented parameters + docstring), rendered statically from the exported module (nothing is executed).
  `#| export` cells stay visible as code (nbdev's Quarto route hides them; here the code is the
  documentation of the implementation), the show_doc entry follows the cell.
* pipeline stages `nbs/pipeline/*.ipynb` are pages showing the executed smoke copy from
  `runs/<run-id>/` (made by `--smoke`, i.e. `ehr-rlvr pipeline configs/smoke.yaml --run-id docs-smoke`);
  a stage that failed or has no executed copy falls back to the unexecuted notebook, with a note on the page
  and in the build log (`_proc/build_log.txt`).
* `nbs/index.ipynb` (the README notebook) is the home page; a placeholder is made if it is absent.

Page names follow nbdev (`00_core.ipynb` -> `core.html`, `pipeline/10_data.ipynb` -> `pipeline/data.html`),
so links from nbdev's `_modidx.py` keep their paths. Usage: `python tools/build_docs.py [--smoke] [--jobs N]`.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from execnb.nbio import mk_cell, read_nb, write_nb
from nbdev.process import NBProcessor, Processor
from nbdev.processors import (_default_exp, add_show_docs, clean_magics, filter_stream_, hide_line,
                              populate_language, rm_header_dash, strip_ansi, strip_hidden_metadata)
from nbdev.showdoc import BasicMarkdownRenderer

ROOT = Path(__file__).resolve().parents[1]
LOG: list[str] = []


def log(msg: str) -> None:
    LOG.append(msg)
    print(f"[docs] {msg}", flush=True)


def page_name(p: Path) -> str:
    "nbdev's page name for a notebook file name: lower case, numeric prefix dropped (`03a_medcalc_x` -> `medcalc_x`)."
    return re.sub(r"^\d+[a-zA-Z0-9]*_", "", p.name.lower()).removesuffix(".ipynb")


# --- show_doc, rendered statically -------------------------------------------------------------------------------
def _git_url() -> str:
    m = re.search(r"^git_url\s*=\s*(\S+)", (ROOT / "settings.ini").read_text(), re.M)
    return m.group(1) if m else ""


def _resolve(module, name: str):
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _source_link(obj) -> str:
    try:
        f = Path(inspect.getsourcefile(inspect.unwrap(obj))).resolve()
        line = inspect.getsourcelines(inspect.unwrap(obj))[1]
        rel = f.relative_to(ROOT).as_posix()
    except Exception:
        return ""
    url = _git_url()
    return f"[source]({url}/blob/main/{rel}#L{line}){{.api-source}}" if url else ""


def render_doc(obj, name: str, level: int = 3) -> str:
    "Markdown for one API entry: heading, signature with commented parameters, docstring (nbdev's show_doc content)."
    md = BasicMarkdownRenderer(obj, name=name)._repr_markdown_()
    lines = md.strip().splitlines()
    # drop nbdev's Quarto-specific pieces: the `---` rule and the `[source](...){target=...}` line (rebuilt below)
    lines = [l for l in lines if l.strip() != "---" and not l.startswith("[source](")]
    body = "\n".join(lines).strip()
    head, _, rest = body.partition("\n")
    if inspect.isclass(obj):
        rest = re.sub(r"^```python\ndef ", "```python\nclass ", rest.strip())
    src = _source_link(obj)
    return (f"{'#' * level} {name}\n\n::::{{container}} api-doc\n{src}\n\n{rest.strip()}\n::::\n").replace("\n\n\n", "\n\n")


class order_show_docs(Processor):
    "nbdev inserts the `show_doc` cells of one export cell in reverse; restore definition order."
    def begin(self):
        cells, out, run = self.nb.cells, [], []
        for c in cells + [None]:
            if c is not None and getattr(c, "has_sd", False):
                run.append(c)
                continue
            out += run[::-1]
            run = []
            if c is not None:
                out.append(c)
        self.nb.cells[:] = out


class static_show_docs(Processor):
    "Replace the `show_doc(name)` cells that nbdev's `add_show_docs` inserted by the rendered markdown."
    def begin(self):
        self.mod = None
        exp = getattr(self.nb, "default_exp_", None)
        if exp:
            try:
                self.mod = importlib.import_module(f"ehr_rlvr.{exp}")
            except Exception as e:
                log(f"WARNING {self.nb.path_}: cannot import ehr_rlvr.{exp} for API docs ({type(e).__name__}: {e})")
        self.documented = self.nb.documented_ = []

    def cell(self, cell):
        m = re.fullmatch(r"show_doc\(([\w.]+)\)", cell.source.strip()) if cell.cell_type == "code" else None
        if not m:  # nbdev's inserted cells and a notebook's own `show_doc(name)` cells
            return
        name, auto = m.group(1), getattr(cell, "has_sd", False)
        try:
            obj = _resolve(self.mod, name)
        except AttributeError:
            where = self.mod.__name__ if self.mod else "(no default_exp)"
            log(f"WARNING {Path(self.nb.path_).name}: `{name}` is not in module {where}: no API entry")
            if auto:
                del cell["source"]
            return
        cell.cell_type, cell.source = "markdown", render_doc(obj, name)
        for k in ("outputs", "execution_count"):
            cell.pop(k, None)
        cell.metadata = {}
        self.documented.append(name)


# --- nbdev directives -> what the page shows ---------------------------------------------------------------------
_DROP = {"hide", "exporti", "default_exp"}
_re_dir_line = re.compile(r"^\s*#\s*\|")


class apply_directives(Processor):
    "Apply nbdev/Quarto cell directives for myst-nb (tags) and remove the directive lines from the shown code."
    def cell(self, cell):
        if cell.cell_type != "code" or getattr(cell, "has_sd", False):
            return
        d = cell.directives_
        first = lambda k: (d.get(k) or [""])[0].lower()
        if d.keys() & _DROP or first("include:") == "false":
            del cell["source"]
            return
        tags = list(cell.metadata.get("tags", []))
        if "hide_input" in d or first("echo:") == "false":
            tags.append("remove-input")
        if "hide_output" in d or first("output:") == "false":
            tags.append("remove-output")
        if first("code-fold:") in ("true", "show"):
            tags.append("hide-input")
        lines = cell.source.splitlines()
        while lines and _re_dir_line.match(lines[0]):
            lines.pop(0)
        cell.source = "\n".join(lines).strip("\n")
        if tags:
            cell.metadata["tags"] = sorted(set(tags))
        if not cell.source.strip() and not cell.get("outputs"):
            del cell["source"]


def clean_outputs(nb) -> None:
    "Offline rendering: widget outputs are dropped (they need CDN scripts and a kernel; tqdm bars frozen at 0%)."
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        outs = []
        for o in cell.get("outputs", []):
            data = o.get("data")
            if data is not None and "application/vnd.jupyter.widget-view+json" in data:
                continue  # a live widget (mostly tqdm bars): its text fallback is a stale "0%" snapshot
            outs.append(o)
        if "outputs" in cell:
            cell.outputs = outs


# --- links and assets in markdown --------------------------------------------------------------------------------
_re_md_link = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_re_html_src = re.compile(r"""(<img\b[^>]*\bsrc=)(["'])([^"']+)\2""", re.I)


def fix_links(text: str, src_dir: Path, page_dir: Path, proc: Path, pages: dict[Path, str]) -> str:
    "Point notebook links at the renamed pages and copy local images into `_proc/_assets`."
    def target(url: str, image: bool) -> str:
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", url, re.I):
            return url
        path, _, frag = url.partition("#")
        f = (src_dir / path).resolve()
        if f.suffix == ".ipynb" and f in pages:
            rel = Path(pages[f] + ".ipynb")
            return _relpath(proc / rel, page_dir) + (f"#{frag}" if frag else "")
        if f.is_file() and (image or f.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".svg")):
            h = hashlib.sha1(str(f).encode()).hexdigest()[:8]
            dst = proc / "_assets" / f"{h}_{f.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
            return _relpath(dst, page_dir)
        if f.exists() and f.is_relative_to(ROOT) and _git_url():  # a repo file (config, script): link to the repo
            kind = "tree" if f.is_dir() else "blob"
            return f"{_git_url()}/{kind}/main/{f.relative_to(ROOT).as_posix()}" + (f"#{frag}" if frag else "")
        return url

    text = _re_md_link.sub(lambda m: m.group(1) + target(m.group(2), m.group(1).startswith("!")) + m.group(3), text)
    return _re_html_src.sub(lambda m: m.group(1) + m.group(2) + target(m.group(3), True) + m.group(2), text)


def _relpath(p: Path, start: Path) -> str:
    import os
    return Path(os.path.relpath(p, start)).as_posix()


_re_tick = re.compile(r"(?<![\[\w`])`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)(\(\))?`(?![\]`])")


def linkify(text: str, index: dict[str, str], page: str) -> str:
    "Backticked names of documented API entries link to their entry (nbdev's doc links, to local pages)."
    out, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        if fence or line.lstrip().startswith("#") or line.startswith("    "):
            out.append(line)
            continue
        def sub(m):
            tgt = index.get(m.group(1))
            if not tgt:
                return m.group(0)
            pg, anchor = tgt
            rel = _relpath(Path(pg + ".ipynb"), Path(page).parent)
            href = f"#{anchor}" if pg == page else f"{rel}#{anchor}"
            return f"[{m.group(0)}]({href})"
        out.append(_re_tick.sub(sub, line))
    return "\n".join(out)


def _anchor(name: str) -> str:
    "myst's heading slug for `### name` (myst_heading_anchors)."
    return re.sub(r"[^\w\- ]", "", name.strip().lower()).replace(" ", "-")


# --- notebooks ---------------------------------------------------------------------------------------------------
def process_nb(src: Path, nb=None):
    "nbdev-process one notebook (no execution); returns the processed notebook."
    nb = nb if nb is not None else read_nb(src)
    nb.path_ = str(src)
    nb.default_exp_ = _default_exp(nb)  # before the directive cells are dropped
    procs = [populate_language, add_show_docs, order_show_docs, strip_ansi, hide_line, filter_stream_, rm_header_dash,
             apply_directives, static_show_docs, clean_magics, strip_hidden_metadata]
    NBProcessor(nb=nb, procs=procs, rm_directives=True).process()
    clean_outputs(nb)
    return nb


def executed_copies(run_dir: Path) -> dict[Path, Path]:
    "Map stage notebook (resolved) -> its executed copies in `run_dir` (papermill's recorded input path), best first."
    out = {}
    for f in sorted(run_dir.glob("*.ipynb")) if run_dir.is_dir() else []:
        try:
            meta = json.loads(f.read_text())["metadata"].get("papermill", {})
        except Exception as e:
            log(f"WARNING {f}: unreadable executed notebook ({e})")
            continue
        inp = meta.get("input_path")
        if inp:
            p = Path(inp) if Path(inp).is_absolute() else (ROOT / inp)
            out.setdefault(p.resolve(), []).append(f)
    # a notebook run as several stages (40_rlvr_base, 40_rlvr_sft): the page shows the one named like the
    # notebook, else the first in the run's stage order (manifest), else by name
    order = []
    try:
        order = [s["name"] for s in json.loads((run_dir / "manifest.json").read_text()).get("stages", [])]
    except Exception:
        pass
    rank = lambda f, nb: (f.stem != nb.stem, order.index(f.stem) if f.stem in order else len(order), f.name)
    return {nb: sorted(fs, key=lambda f: rank(f, nb)) for nb, fs in out.items()}


def _failed(nb_json: dict) -> str | None:
    for c in nb_json["cells"]:
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                return f"{o.get('ename')}: {o.get('evalue')}"[:200]
        if c.get("cell_type") == "code" and c.get("metadata", {}).get("papermill", {}).get("status") == "pending":
            return "not all cells ran"
    if nb_json["metadata"].get("papermill", {}).get("exception"):
        return "the stage raised an exception"
    return None


def note_cell(kind: str, text: str):
    return mk_cell(f":::{{{kind}}}\n{text}\n:::", "markdown")


def run_smoke(config: Path, run_id: str, timeout: int) -> None:
    if not config.exists():
        log(f"smoke run skipped: {config.relative_to(ROOT)} does not exist")
        return
    exe = Path(sys.executable).parent / "ehr-rlvr"
    cmd = [str(exe) if exe.exists() else "ehr-rlvr", "pipeline", str(config.relative_to(ROOT)), "--run-id", run_id]
    log("smoke run: " + " ".join(cmd[1:]))
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"WARNING smoke run timed out after {timeout} s: stages without executed copies fall back")
        return
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
    if r.returncode:
        log(f"WARNING smoke run failed (exit {r.returncode}) after {time.time() - t0:.0f} s:\n{tail}")
    else:
        log(f"smoke run done in {time.time() - t0:.0f} s")


def build(args) -> int:
    t0 = time.time()
    nbs, proc, out = ROOT / "nbs", ROOT / args.proc, ROOT / args.out
    if proc.exists():
        shutil.rmtree(proc)
    proc.mkdir(parents=True)
    if args.smoke:
        run_smoke(ROOT / args.config, args.run_id, args.smoke_timeout)
        t0 = time.time()  # build time below excludes the smoke run

    lib = [p for p in sorted(nbs.glob("*.ipynb")) if not p.name.startswith("_") and p.name != "index.ipynb"]
    stages = [p for p in sorted((nbs / "pipeline").glob("*.ipynb")) if not p.name.startswith("_")]
    pages = {p.resolve(): page_name(p) for p in lib}
    pages |= {p.resolve(): f"pipeline/{page_name(p)}" for p in stages}
    index_src = nbs / "index.ipynb"
    pages[index_src.resolve()] = "index"

    processed = {}
    for p in lib:
        processed[p] = process_nb(p)

    run_dir = Path(args.run_dir) if args.run_dir else ROOT / "runs" / args.run_id
    run_label = f"runs/{args.run_id}/" if not args.run_dir else str(run_dir)
    executed = executed_copies(run_dir)
    for p in stages:
        copies = executed.get(p.resolve(), [])
        ex = copies[0] if copies else None
        also = f" (also run as {', '.join(f'`{c.stem}`' for c in copies[1:])})" if len(copies) > 1 else ""
        note = None
        if ex is None:
            why = f"no executed copy in {run_label}"
            log(f"FALLBACK {p.relative_to(ROOT)}: {why}; the page shows the unexecuted notebook")
            nb = read_nb(p)
            note = note_cell("note", f"This page shows the stage notebook **without outputs**: {why} "
                             f"(`make docs` runs `ehr-rlvr pipeline {args.config} --run-id {args.run_id}`).")
        else:
            nb_json = json.loads(ex.read_text())
            why = _failed(nb_json)
            if why:
                log(f"FALLBACK {p.relative_to(ROOT)}: the smoke run of this stage failed ({why}); unexecuted notebook shown")
                nb = read_nb(p)
                note = note_cell("warning", f"The smoke run of this stage failed ({why}); this page shows the "
                                 "stage notebook **without outputs**.")
            else:
                log(f"{p.relative_to(ROOT)}: executed smoke copy {ex}")
                nb = read_nb(ex)
                note = note_cell("note", f"Outputs are from the CPU smoke run (`{args.config}`, run `{run_dir.name}`, "
                                 f"stage `{ex.stem}`{also}).")
        nb = process_nb(p, nb)
        if note is not None:
            idx = next((i + 1 for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), 0)
            nb.cells.insert(idx, note)
        processed[p] = nb

    if index_src.exists():
        processed[index_src] = process_nb(index_src)
    else:
        log("WARNING nbs/index.ipynb is missing: a placeholder home page is used")
        processed[index_src] = process_nb(index_src, nb=_placeholder_index())

    # API index for doc links: name -> (page, anchor); names documented on two pages are left unlinked
    api, seen = {}, {}
    for p, nb in processed.items():
        for name in getattr(nb, "documented_", []):
            seen[name] = seen.get(name, 0) + 1
            api[name] = (pages[p.resolve()], _anchor(name))
    api = {k: v for k, v in api.items() if seen[k] == 1}

    for p, nb in processed.items():
        page = pages[p.resolve()]
        dst = proc / f"{page}.ipynb"
        dst.parent.mkdir(parents=True, exist_ok=True)
        for c in nb.cells:
            if c.cell_type == "markdown":
                c.source = fix_links(c.source, p.parent, dst.parent, proc, pages)
                c.source = linkify(c.source, api, page)
        if page == "index":
            nb.cells.append(_toctree(lib, stages, pages))
        _strip_private(nb)
        write_nb(nb, dst)
    n_api = sum(len(getattr(nb, "documented_", [])) for nb in processed.values())
    log(f"processed {len(processed)} notebooks ({len(lib)} library, {len(stages)} pipeline, index), "
        f"{n_api} API entries, in {time.time() - t0:.1f} s")

    (proc / "build_log.txt").write_text("\n".join(LOG) + "\n")
    t1 = time.time()
    # sphinx writes into _proc/_build/html (myst-nb puts its jupyter_execute/ next to the html folder), then the
    # finished site replaces `out` in one move
    html = proc / "_build" / "html"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(ROOT / "docs"), "-d", str(proc / "_doctrees"),
           "-j", str(args.jobs), "-q", str(proc), str(html)]
    if args.strict:
        cmd.insert(-2, "-W")
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        log(f"ERROR sphinx failed (exit {r.returncode})")
        return r.returncode
    if out.exists():
        shutil.rmtree(out)
    shutil.move(html, out)
    if (proc / "_assets").is_dir():  # images referenced from raw HTML (`<img src=...>`): sphinx copies only markdown images
        shutil.copytree(proc / "_assets", out / "_assets", dirs_exist_ok=True)
    log(f"site in {out.relative_to(ROOT)}/ (sphinx {time.time() - t1:.1f} s, total {time.time() - t0:.1f} s); "
        f"preview: make preview")
    (out / "build_log.txt").write_text("\n".join(LOG) + "\n")
    return 0


def _strip_private(nb) -> None:
    for c in nb.cells:
        for k in [k for k in c if k.endswith("_") or k in ("idx_", "has_sd")]:
            c.pop(k, None)


def _toctree(lib, stages, pages):
    def tree(caption, items):
        return f"```{{toctree}}\n:hidden:\n:caption: {caption}\n\n" + "\n".join(pages[p.resolve()] for p in items) + "\n```\n"
    return mk_cell(tree("Library", lib) + "\n" + (tree("Pipeline", stages) if stages else ""), "markdown")


def _placeholder_index():
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# ehr_rlvr\n> Placeholder home page: `nbs/index.ipynb` is missing.")]
    p = ROOT / "_proc" / "_placeholder_index.ipynb"
    nbformat.write(nb, p)
    nb2 = read_nb(p)
    p.unlink()
    return nb2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="run the smoke pipeline first (executed stage pages)")
    ap.add_argument("--config", default="configs/smoke.yaml", help="pipeline config of the smoke run")
    ap.add_argument("--run-id", default="docs-smoke", help="run id whose executed stages the pipeline pages show")
    ap.add_argument("--run-dir", default=None, help="folder of an executed run to show instead of runs/<run-id>")
    ap.add_argument("--smoke-timeout", type=int, default=1800, help="seconds before the smoke run is abandoned")
    ap.add_argument("--out", default="_docs", help="site folder")
    ap.add_argument("--proc", default="_proc", help="processed notebooks (intermediate)")
    ap.add_argument("--jobs", default="auto", help="sphinx parallel jobs")
    ap.add_argument("--strict", action="store_true", help="turn sphinx warnings into errors")
    return build(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
