"""Copy the figures worth keeping into figures/ and write figures/README.md with where each came from.

    python tools/collect_figures.py --run runs/demo            # a pipeline run's report and pilot figures
    python tools/collect_figures.py --run runs/demo-seeds --run runs/demo-seeds/seed-0   # a multi-seed run, one seed
    python tools/collect_figures.py --notebook nbs/23_experts_results.ipynb   # images saved in an executed notebook

`runs/` is not versioned; figures/ is. Each call replaces the figures of its source and keeps the others.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGS = ROOT / "figures"
INDEX = FIGS / "sources.json"  # file name -> {source, made_by, date}


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def from_run(run: Path) -> dict[str, dict]:
    "report/*.png and every pilot folder's figures of a pipeline run, named <run>_<file>."
    if not (run / "report").is_dir():
        raise SystemExit(f"{run}: no report/ folder (run the 60_report stage first)")
    manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
    name = manifest.get("config", {}).get("name", "")
    config = f"configs/{name}.yaml" if (ROOT / "configs" / f"{name}.yaml").exists() else f"<config {name!r}>"
    top = run.parent if run.name.startswith("seed-") and (run.parent / "manifest.json").exists() else None
    seeds = json.loads((top / "manifest.json").read_text()).get("seeds") if top else None
    if seeds:  # one seed of a multi-seed run
        prefix, made_by = f"{top.name}_{run.name}", f"ehr-rlvr pipeline {config} --run-id {top.name} --seeds {' '.join(map(str, seeds))}"
    else:
        prefix = run.name
        seeds = manifest.get("seeds")
        made_by = f"ehr-rlvr pipeline {config} --run-id {run.name}" + (f" --seeds {' '.join(map(str, seeds))}" if seeds else "")
    out = {}
    for png in sorted(run.glob("report/*.png")):
        if png.name.startswith("pilot"):  # 60_report's copies of the pilot figures: taken from their own folders
            continue
        out[f"{prefix}_{png.name}"] = dict(path=png, source=_rel(png), made_by=made_by)
    for png in sorted(run.glob("pilot*/*.png")):
        out[f"{prefix}_{png.parent.name}_{png.name}"] = dict(path=png, source=_rel(png), made_by=made_by)
    return out


def from_notebook(nb: Path) -> dict[str, dict]:
    "Every PNG output of an executed notebook, named <notebook>_<section>.png after the markdown heading above it."
    cells = json.loads(nb.read_text())["cells"]
    out, heading = {}, "figure"
    for i, c in enumerate(cells):
        if c["cell_type"] == "markdown":
            first = "".join(c["source"]).strip().splitlines()[:1]
            if first and first[0].startswith("#"):
                heading = re.sub(r"[^a-z0-9]+", "_", first[0].lstrip("# ").lower()).strip("_")[:40].strip("_")
            continue
        for o in c.get("outputs", []):
            png = o.get("data", {}).get("image/png")
            if png:
                name = f"{nb.stem}_{heading}.png"
                k = 2
                while name in out:
                    name, k = f"{nb.stem}_{heading}_{k}.png", k + 1
                out[name] = dict(data=base64.b64decode(png), source=f"{_rel(nb)} (cell {i})",
                                 made_by=f"executed notebook {_rel(nb)}")
    if not out:
        raise SystemExit(f"{nb}: no image outputs (execute the notebook first)")
    return out


def write(found: dict[str, dict]) -> list[str]:
    "Copy the figures, update the index and the README; returns the names written."
    FIGS.mkdir(exist_ok=True)
    index = json.loads(INDEX.read_text()) if INDEX.exists() else {}
    sources = {v["made_by"] for v in found.values()}
    for name in [n for n, v in index.items() if v["made_by"] in sources and n not in found]:
        (FIGS / name).unlink(missing_ok=True)
        index.pop(name)
    today = dt.date.today().isoformat()
    for name, v in found.items():
        if "path" in v:
            shutil.copyfile(v["path"], FIGS / name)
        else:
            (FIGS / name).write_bytes(v["data"])
        index[name] = dict(source=v["source"], made_by=v["made_by"], date=today)
    INDEX.write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")
    rows = "\n".join(f"| [{n}]({n}) | `{v['source']}` | `{v['made_by']}` | {v['date']} |" for n, v in sorted(index.items()))
    (FIGS / "README.md").write_text(
        "# Figures\n\nFigures worth keeping from runs and executed notebooks (`runs/` itself is not versioned). "
        "Made by `python tools/collect_figures.py`; do not edit by hand.\n\n"
        "| figure | copied from | made by | date |\n|---|---|---|---|\n" + rows + "\n")
    return sorted(found)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, action="append", default=[], help="a pipeline run folder, e.g. runs/demo (repeatable)")
    ap.add_argument("--notebook", type=Path, help="an executed notebook with image outputs")
    a = ap.parse_args(argv)
    if not (a.run or a.notebook):
        ap.error("give --run and/or --notebook")
    found = {}
    for run in a.run:
        found |= from_run(run)
    if a.notebook:
        found |= from_notebook(a.notebook)
    for n in write(found):
        print(f"figures/{n}")


if __name__ == "__main__":
    main()
