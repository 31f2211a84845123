"""The documentation works without the internet, and the results page shows what the results files hold.

- The offline check itself (`docs/_hooks/offline.py`) on hand-made pages: a CDN script, a remote
  stylesheet, a missing local asset and a math page without MathJax are caught (no MkDocs needed).
- The results page (`docs/_hooks/results.py`) on the committed `benchmarks/results/*.json`: no
  "not measured" cells, the ant expert kept out of the RL runs table, commands and hardware listed
  under the table, not squeezed into its columns; on made-up runs, a flowsoc column per agent measured
  (no MkDocs needed).
- With the `docs` extra installed: `mkdocs.yml` loads nothing from another host, and a small site
  built with the real configuration (theme, Markdown extensions, MathJax hook) from the real home
  page, which has math, references only assets that are in the site, MathJax among them. Skipped
  when MkDocs is not installed (CI's test environment installs `.[rl,dev]` only; `.ci/run` runs the
  same check on the full site after `mkdocs build --strict`).
"""

import importlib.util
import pathlib
import shutil
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "_hooks"


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"_flowsoc_docs_hook_{name}", HOOKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


offline = _load_hook("offline")
results = _load_hook("results")


# ------------------------------------------------------------------------------------ the check itself


def _page(path: pathlib.Path, head: str, body: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head>{head}</head><body>{body}</body></html>")


def test_check_site_accepts_a_local_site(tmp_path):
    (tmp_path / offline.MATHJAX_SITE_DIR).mkdir(parents=True)
    (tmp_path / offline.MATHJAX_SCRIPT).write_text("// MathJax")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "main.css").write_text("body { background: url(../img/x.png); }")
    _page(
        tmp_path / "concepts" / "soc" / "index.html",
        '<link rel="stylesheet" href="../../assets/main.css"><link rel="canonical" href="https://example.org/">'
        f'<script src="../../{offline.MATHJAX_SCRIPT}"></script>',
        '<span class="arithmatex">\\(x\\)</span><a href="https://example.org/">a link is not a load</a>',
    )
    problems, counts = offline.check_site(tmp_path)
    assert problems == []
    assert counts == dict(pages=1, math_pages=1, assets=2)


def test_check_site_flags_remote_and_missing_assets(tmp_path):
    _page(
        tmp_path / "index.html",
        '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<link rel="preconnect" href="https://fonts.gstatic.com">'
        '<script src="//cdn.example.org/x.js"></script>'
        '<link rel="stylesheet" href="assets/missing.css">',
        '<div class="arithmatex">\\[x\\]</div>',
    )
    (tmp_path / "style.css").write_text("@import url(https://fonts.example.org/a.css);")
    problems, _ = offline.check_site(tmp_path)
    text = "\n".join(problems)
    assert f"{offline.MATHJAX_SCRIPT} is not in the site" in text
    for url in (
        "https://unpkg.com/",
        "https://fonts.googleapis.com/",
        "https://fonts.gstatic.com",
        "//cdn.example.org",
    ):
        assert url in text, url
    assert "assets/missing.css, which is not in the site" in text
    assert "index.html: has math but does not load" in text
    assert "style.css: uses a remote resource" in text
    assert offline.main([str(tmp_path)]) == 1


# ------------------------------------------------------------------------------------ results page


def test_results_page_from_the_results_files():
    loaded = results._load(ROOT / "benchmarks" / "results")
    text = results._paper_section(loaded, ROOT)
    assert "| not measured" not in text and text.count("not measured") <= 1  # said once, not per cell
    assert "agent ?" not in text and "| ? |" not in text
    runs_part, _, others_part = text.partition("### Other success rates")
    table = [line for line in runs_part.splitlines() if line.startswith("|")]
    runs_table = table[table.index(next(line for line in table if line.startswith("| run |"))) :]
    header = runs_table[0]
    assert "command" not in header and "hardware" not in header  # listed under the table instead
    measured = [r for r in results._measured_rows(loaded, ROOT) if r["agent"] is not None]
    assert len(runs_table) == 2 + len(measured)
    for row in measured:  # every run's command is printed whole, once, below the table
        assert f"`{row['command']}`" in runs_part
    for line in runs_table:
        assert "antmaze-large-v0`" not in line  # the ant expert is not an RL run
    experts = ROOT / "benchmarks" / "results" / "experts.json"
    if experts.exists() and "navigation" in experts.read_text():
        assert "`antmaze-large-v0`" in others_part


def test_results_page_has_a_flowsoc_column_per_measured_agent():
    """The papers' table gains a flowsoc column for each agent with runs on the ten domains (QAM-E, QAM-F and SQAM
    too, whatever the case of their names), beside the agent's paper column; an agent without runs gets none."""
    rows = [
        {"env": "cube-double-play-singletask-task2-v0", "agent": "sqam", "success": 0.5},
        {"env": "cube-double-play-singletask-task3-v0", "agent": "sqam", "success": 0.7},
        {"env": "scene-play-singletask-task1-v0", "agent": "QAM-E", "success": 0.4},
        {"env": "scene-play-singletask-task1-v0", "agent": "qamf", "success": 0.3},
    ]
    text = results._paper_section([(pathlib.Path("made_up.json"), {"rows": rows})], ROOT)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header = table[0].strip("| ").split(" | ")
    assert header == [
        "domain", "TRQAM (paper)", "QAM (paper)", "QAM-E (paper)", "QAM-E (flowsoc)", "QAM-F (flowsoc)",
        "SQAM (paper)", "SQAM (flowsoc)",
    ]  # fmt: skip
    cube_double = next(line for line in table if line.startswith("| cube-double |")).strip("| ").split(" | ")
    assert cube_double[header.index("SQAM (paper)")] == str(results.PAPER["sqam"]["cube-double"])
    assert cube_double[header.index("SQAM (flowsoc)")] == "60 (2 tasks)"
    scene = next(line for line in table if line.startswith("| scene |")).strip("| ").split(" | ")
    assert scene[header.index("QAM-E (flowsoc)")] == "40 (1 task)"
    assert scene[header.index("QAM-F (flowsoc)")] == "30 (1 task)"
    empty = results._paper_section([], ROOT)
    assert empty.splitlines()[0] == "| domain | TRQAM | QAM | QAM-E | SQAM |"


# ------------------------------------------------------------------------------------ with MkDocs


def _mkdocs():
    pytest.importorskip("mkdocs", reason="MkDocs is in the docs extra: pip install -c constraints.txt -e '.[docs]'")
    pytest.importorskip("material", reason="Material for MkDocs is in the docs extra")
    try:
        offline.mathjax_root()
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_config_loads_nothing_remote():
    _mkdocs()
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"))
    assets = [str(s) for s in config.extra_javascript] + [str(s) for s in config.extra_css]
    assert assets and not [a for a in assets if offline._is_remote(a)]
    assert offline.MATHJAX_SCRIPT in [str(s) for s in config.extra_javascript]
    assert config.theme["font"] is False  # Material's default font comes from Google Fonts
    assert any(pathlib.Path(h).name == "offline.py" for h in config["hooks"])
    assert config.site_url


def test_built_page_references_only_local_assets(tmp_path):
    """A small site with the real theme, extensions and hooks, from the real home page and MathJax
    configuration (the API pages need mkdocstrings and are checked by `.ci/run` on the full site)."""
    _mkdocs()
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "docs" / "index.md", docs / "index.md")
    shutil.copytree(ROOT / "docs" / "_static", docs / "_static")
    (tmp_path / "mkdocs.yml").write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\n"
        "strict: false\n"  # the home page links to pages and API objects this small site leaves out
        "plugins: [search]\n"
        f"hooks: ['{HOOKS / 'offline.py'}']\n"
        "watch: []\n"
        "nav: [index.md]\n"
    )
    config = load_config(str(tmp_path / "mkdocs.yml"), site_dir=str(tmp_path / "site"))
    build(config)
    site = tmp_path / "site"
    page = (site / "index.html").read_text()
    assert 'class="arithmatex"' in page
    assert f'src="{offline.MATHJAX_SCRIPT}"' in page
    assert "unpkg.com" not in page and "fonts.googleapis.com" not in page
    assert (site / offline.MATHJAX_SCRIPT).stat().st_size > 1_000_000
    assert (site / offline.MATHJAX_SITE_DIR / "LICENSE").is_file()
    assert (site / offline.MATHJAX_SITE_DIR / "input" / "tex" / "extensions" / "boldsymbol.js").is_file()
    problems, counts = offline.check_site(site)
    assert problems == []
    assert counts["math_pages"] >= 1
