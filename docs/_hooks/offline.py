"""MkDocs hook: a site that works without the internet.

flowsoc is built for machines that cannot reach the internet, so its documentation must not need it
either. This hook

- serves MathJax from the site itself: the files of MathJax 3.2.2 come from the Python package
  `django-static-mathjax` (in the `docs` extra; Apache-2.0, the MathJax project's own license; it
  needs no Django, it only ships MathJax's `es5/` build inside an empty `mathjax` Python package)
  and are added to the build under `_static/mathjax/`, so `mkdocs build` copies them into the site
  and `mkdocs serve` serves them. `mkdocs.yml` loads `_static/mathjax/tex-svg.js`, the TeX input
  with SVG output: one script and no web fonts, which also renders when a page is opened from the
  file system. MathJax's TeX extensions (loaded on first use of, e.g., `\\boldsymbol`) and the
  accessibility and menu components it loads on demand are copied too;
- checks the built site: no page may load a script, stylesheet, font, image or frame from another
  host, every local asset a page loads must exist, and the MathJax script must be in the site.
  Each problem is a warning, so `mkdocs build --strict` fails on it.

The same check runs on its own (CI runs it after the docs build, see `.ci/run`):

    python docs/_hooks/offline.py SITE_DIR
"""

from __future__ import annotations

import html.parser
import importlib.util
import logging
import pathlib
import posixpath
import sys
import urllib.parse
from collections.abc import Iterator


log = logging.getLogger("mkdocs.hooks.offline")

MATHJAX_DISTRIBUTION = "django-static-mathjax"  # on PyPI; its import name is `mathjax`
MATHJAX_SITE_DIR = "_static/mathjax"  # where the files go in the site
MATHJAX_ENTRY = "tex-svg.js"  # the component mkdocs.yml loads (TeX in, SVG out, no fonts)
MATHJAX_SCRIPT = f"{MATHJAX_SITE_DIR}/{MATHJAX_ENTRY}"

# What of MathJax's `es5/` build goes into the site: the entry script and what it may load on demand
# (TeX extensions, the menu, accessibility, speech-rule maps, the other output jax for the menu's
# renderer switch). The other combined bundles (tex-chtml.js, mml-svg.js, ...) and the Node-only
# files are left out.
_MATHJAX_DIRS = ("a11y", "input", "output", "sre", "ui")
_MATHJAX_TOP = (MATHJAX_ENTRY, "core.js", "loader.js", "startup.js")

# Tags and attributes through which a browser fetches something when it shows a page.
_LOADING_ATTRS = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "embed": ("src",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "object": ("data",),
}
# <link rel=...> values that fetch their href (not `canonical`, `alternate`, `next`, ...).
_LOADING_RELS = {
    "stylesheet",
    "icon",
    "shortcut",
    "apple-touch-icon",
    "preload",
    "modulepreload",
    "prefetch",
    "preconnect",
    "dns-prefetch",
    "manifest",
}


# ------------------------------------------------------------------------------------ MathJax files


def mathjax_root() -> pathlib.Path:
    """MathJax's `es5/` directory inside the installed `django-static-mathjax` package."""
    spec = importlib.util.find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        es5 = pathlib.Path(location) / "static" / "mathjax" / "es5"
        if (es5 / MATHJAX_ENTRY).is_file():
            return es5
    raise FileNotFoundError(
        f"MathJax not found: the docs serve it from the `{MATHJAX_DISTRIBUTION}` package, which the `docs` "
        "extra installs: `pip install -c constraints.txt -e '.[docs]'`."
    )


def mathjax_files(es5: pathlib.Path) -> Iterator[tuple[pathlib.Path, str]]:
    """(source file, path in the site) for every MathJax file the site serves."""
    for name in _MATHJAX_TOP:
        yield es5 / name, f"{MATHJAX_SITE_DIR}/{name}"
    for directory in _MATHJAX_DIRS:
        for path in sorted((es5 / directory).rglob("*")):
            if path.is_file():
                yield path, f"{MATHJAX_SITE_DIR}/{path.relative_to(es5).as_posix()}"
    license_file = es5.parent / "LICENSE"
    if license_file.is_file():
        yield license_file, f"{MATHJAX_SITE_DIR}/LICENSE"


# ------------------------------------------------------------------------------------ site check


def _is_remote(url: str) -> bool:
    parts = urllib.parse.urlsplit(url.strip())
    return bool(parts.netloc) or parts.scheme not in ("", "data", "blob", "about", "javascript")


def _urls(value: str, attr: str) -> list[str]:
    if attr == "srcset":
        return [item.strip().split()[0] for item in value.split(",") if item.strip()]
    return [value]


class _Assets(html.parser.HTMLParser):
    """The URLs a page loads: (tag, url) pairs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self.arithmatex = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v is not None}
        if "arithmatex" in values.get("class", "").split():
            self.arithmatex = True
        if tag == "link":
            rels = set(values.get("rel", "").lower().split())
            if rels & _LOADING_RELS and values.get("href"):
                self.found.append((f"link rel={values['rel']}", values["href"]))
            return
        for attr in _LOADING_ATTRS.get(tag, ()):
            if values.get(attr):
                self.found.extend((tag, url) for url in _urls(values[attr], attr))


def _local_target(site: pathlib.Path, page: pathlib.Path, url: str) -> pathlib.Path:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if path.startswith("/"):
        rel = path.lstrip("/")
    else:
        rel = posixpath.normpath(posixpath.join(page.parent.relative_to(site).as_posix(), path))
    target = site / rel
    return target / "index.html" if path.endswith("/") or target.is_dir() else target


def check_site(site_dir: str | pathlib.Path) -> tuple[list[str], dict[str, int]]:
    """Problems with the built site at `site_dir` (an empty list when it works offline), and counts.

    A problem is a page that loads something from another host (`<script src>`, `<link
    rel=stylesheet|icon|preload|... href>`, `<img src>`, ...), a stylesheet that imports or uses a
    remote `url(...)`, a local asset a page loads that is not in the site, a missing MathJax script, or
    a page with math (arithmatex markup) that does not load it.
    """
    site = pathlib.Path(site_dir)
    problems: list[str] = []
    counts = dict(pages=0, math_pages=0, assets=0)
    mathjax = site / MATHJAX_SCRIPT
    if not mathjax.is_file():
        problems.append(f"{MATHJAX_SCRIPT} is not in the site")
    for page in sorted(site.rglob("*.html")):
        if MATHJAX_SITE_DIR in page.relative_to(site).as_posix():
            continue
        counts["pages"] += 1
        parser = _Assets()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        name = page.relative_to(site).as_posix()
        loads_mathjax = False
        for tag, url in parser.found:
            counts["assets"] += 1
            if _is_remote(url):
                problems.append(f"{name}: <{tag}> loads {url} from another host")
                continue
            if urllib.parse.urlsplit(url).scheme:  # data:, blob:
                continue
            target = _local_target(site, page, url)
            if not target.exists():
                problems.append(f"{name}: <{tag}> loads {url}, which is not in the site")
            elif tag == "script" and target.resolve() == mathjax.resolve():
                loads_mathjax = True
        if parser.arithmatex:
            counts["math_pages"] += 1
            if not loads_mathjax:
                problems.append(f"{name}: has math but does not load {MATHJAX_SCRIPT}")
    for css in sorted(site.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for marker in (
            "url(http:",
            "url(https:",
            "url(//",
            'url("http',
            "url('http",
            "@import url(http",
            '@import "http',
            "@import 'http",
        ):
            if marker in text:
                problems.append(f"{css.relative_to(site).as_posix()}: uses a remote resource ({marker}...)")
                break
    return problems, counts


# ------------------------------------------------------------------------------------ the hook


def on_config(config):
    scripts = [str(s) for s in config.extra_javascript]
    for entry in scripts + [str(s) for s in config.extra_css]:
        if _is_remote(entry):
            log.warning(
                "offline hook: extra_javascript/extra_css entry %s is on another host; serve it from the site", entry
            )
    if MATHJAX_SCRIPT not in scripts:
        log.warning("offline hook: extra_javascript does not load %s", MATHJAX_SCRIPT)
    if config.theme.get("font") is not False:
        log.warning("offline hook: set `theme.font: false` (otherwise Material loads Google Fonts)")
    return config


def on_files(files, config):
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    try:
        es5 = mathjax_root()
    except FileNotFoundError as err:
        raise PluginError(str(err)) from err
    for source, dest in mathjax_files(es5):
        files.append(File.generated(config, dest, abs_src_path=str(source)))
    return files


def on_post_build(config):
    problems, counts = check_site(config.site_dir)
    for problem in problems:
        log.warning("offline hook: %s", problem)
    log.info(
        "offline hook: %d pages (%d with math) load %d assets, all from the site%s",
        counts["pages"],
        counts["math_pages"],
        counts["assets"],
        "" if not problems else " except the ones above",
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python docs/_hooks/offline.py SITE_DIR", file=sys.stderr)
        return 2
    problems, counts = check_site(argv[0])
    for problem in problems:
        print(f"offline check: {problem}", file=sys.stderr)
    if counts["pages"] == 0:
        print(f"offline check: no HTML pages under {argv[0]}", file=sys.stderr)
        return 1
    if counts["math_pages"] == 0:
        print(
            "offline check: no page has math (arithmatex markup); is pymdownx.arithmatex configured?", file=sys.stderr
        )
        return 1
    print(
        f"offline check: {counts['pages']} pages ({counts['math_pages']} with math) load {counts['assets']} assets"
        + (f"; {len(problems)} problems" if problems else f", all from the site; MathJax at {MATHJAX_SCRIPT}")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
