#!/usr/bin/env python
"""Render README.md from nbs/index.ipynb offline (nbdev_readme needs Quarto, which cannot be installed here).

    python tools/readme.py          # write README.md
    python tools/readme.py --check  # exit 1 if README.md is out of date
Cells whose first lines hold `#| hide` are left out; other nbdev directives are stripped from code.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by tools/readme.py (make export); edit the notebook, not this file. -->\n\n"


def _directives(src: str) -> set[str]:
    out = set()
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("#|"):
            out.add(s[2:].strip().split()[0] if s[2:].strip() else "")
        elif s:
            break
    return out


def _text_outputs(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream" and o.get("name") == "stdout":
            parts.append("".join(o["text"]))
        elif o.get("output_type") in ("execute_result", "display_data"):
            data = o.get("data", {})
            if "text/markdown" in data:
                parts.append("".join(data["text/markdown"]))
            elif "text/plain" in data:
                parts.append("".join(data["text/plain"]))
    return "\n".join(p.rstrip() for p in parts if p.strip())


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text())
    chunks = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            chunks.append(src.strip())
        elif cell["cell_type"] == "code":
            d = _directives(src)
            if {"hide", "hide_input"} & d or "default_exp" in d:
                continue
            code = "\n".join(l for l in src.splitlines() if not l.strip().startswith("#|")).strip()
            if code:
                chunks.append(f"```python\n{code}\n```")
            out = _text_outputs(cell)
            if out:
                chunks.append(out if "text/markdown" in json.dumps(cell.get("outputs", [])) else f"```\n{out}\n```")
    return HEADER + "\n\n".join(c for c in chunks if c) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if README.md is not in sync with nbs/index.ipynb")
    a = p.parse_args(argv)
    text, readme = render(), ROOT / "README.md"
    if a.check:
        if not readme.exists() or readme.read_text() != text:
            print("README.md is out of sync with nbs/index.ipynb: run `make export` (tools/readme.py) and commit.", file=sys.stderr)
            return 1
        print("README.md in sync with nbs/index.ipynb")
        return 0
    readme.write_text(text)
    print(f"wrote {readme.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
