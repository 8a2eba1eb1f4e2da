# Sphinx configuration for the offline docs site (built by tools/build_docs.py; `make docs`).
# The source folder is `_proc/`: nbdev-processed copies of nbs/*.ipynb (library notebooks, with outputs as
# committed) and of the pipeline stages (executed smoke copies). Notebooks are never executed here.
# Quarto users keep nbs/_quarto.yml + `nbdev_docs`; this is the pip-only route.
import configparser
from pathlib import Path

_root = Path(__file__).resolve().parents[1]
_ini = configparser.ConfigParser()
_ini.read(_root / "settings.ini")
_s = _ini["DEFAULT"]

project = _s.get("title", "ehr_rlvr")
author = _s.get("author", "")
copyright = _s.get("copyright", "")
release = version = _s.get("version", "")

extensions = ["myst_nb", "sphinx.ext.githubpages"]  # githubpages: .nojekyll so GitHub Pages serves _static/
root_doc = "index"
exclude_patterns = ["_doctrees", "_build", "_assets", "**/.ipynb_checkpoints", "build_log.txt"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# myst / myst-nb: notebooks arrive executed (or deliberately unexecuted) and are rendered as they are.
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}  # no CDN scripts: the build script drops widget outputs
myst_enable_extensions = ["colon_fence", "attrs_inline", "attrs_block"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": _s.get("git_url", ""),
    "repository_branch": _s.get("branch", "main"),
    "path_to_docs": "nbs",
    "use_repository_button": True,
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_context = {"default_mode": "auto"}
pygments_style = "default"
