"""The docs: references that resolve, results that cannot go stale (results.py), a README that stays short.

A reference is a section of a page (`BENCHMARKS.md, "Title"`, `docs/x.md, "Title"`, a link `docs/x.md#anchor`),
a file of the project (`docs/x.md`, `tests/test_x.py`), or a function, class or constant written `module.name`
where module is one of the project's (`step.train_step`, `accel.results.si`). They are looked for in the README,
every page under docs/ (the code quoted in docs/history/ excepted: it is the code of the commit the page records),
tests/README.md, BENCHMARKS.md, and in the comments and strings of every Python file; modules are read with ast,
never imported.
"""

import ast
import io
import json
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from test_ladder import dense_with, suite_run, write_own_results
from test_report import hw_rows

import results

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file())
README = ROOT / "README.md"
README_MAX_LINES = 220  # the hard limit (the aim: about 200)
# File names that a module.name pattern would otherwise read as an attribute: train.py, summary.json, ...
EXTENSIONS = {
    "py",
    "md",
    "json",
    "csv",
    "png",
    "npz",
    "pt",
    "gif",
    "mp4",
    "ipynb",
    "txt",
    "yaml",
    "yml",
    "lock",
    "sh",
    "toml",
    "cfg",
    "html",
    "log",
    "whl",
    "gz",
    "zip",
    "svg",
    "jpg",
}
DIRECTORIES = ("docs", "tests", "benchmarks", "notebooks", *PACKAGES)

SECTION = re.compile(r"(?P<file>(?<![\w/.-])(?:docs/[\w/.-]+\.md|[\w-]+\.md|README))\s*,?\s+\"(?P<title>[^\"]+)\"")
LINK = re.compile(r"\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
FILE = re.compile(rf"(?<![\w/.-])(?P<path>(?:{'|'.join(DIRECTORIES)})/[\w/.-]*\w\.(?:py|md|ipynb))")
DOTTED = re.compile(r"(?<![\w./-])(?P<chain>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def module_paths() -> dict[str, Path]:
    """Every project module by its dotted name: rundir, accel, accel.results, ..."""
    paths = {}
    for path in [*ROOT.glob("*.py"), *(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return paths


MODULES = module_paths()


def bound_names(statements) -> dict[str, ast.AST]:
    """The names a block of statements binds (defs, classes, assignments, imports), descending into if/try/with."""
    names = {}
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        for block in ("body", "orelse", "finalbody", "handlers"):
            if isinstance(node, (ast.If, ast.Try, ast.With)) and hasattr(node, block):
                names.update(bound_names(getattr(node, block)))
    return names


def class_names(node: ast.ClassDef) -> set[str]:
    """A class's attributes: its body's names and what its methods assign to self."""
    names = set(bound_names(node.body))
    for child in ast.walk(node):
        if (
            isinstance(child, ast.Attribute)
            and isinstance(child.ctx, ast.Store)
            and isinstance(child.value, ast.Name)
            and child.value.id == "self"
        ):
            names.add(child.attr)
    return names


_TREES = {}


def module_tree(name: str) -> ast.Module:
    if name not in _TREES:
        _TREES[name] = ast.parse(MODULES[name].read_text())
    return _TREES[name]


def unresolved(chain: str, source: Path | None = None) -> str | None:
    """Why module.name.name... does not resolve (None where it does, or where it names no project module). In a
    package's module a sibling's name is tried first: results.si in accel/ is accel.results.si."""
    parts = chain.split(".")
    if parts[1] in EXTENSIONS:
        return None
    package = source.parent.name if source is not None and source.parent.name in PACKAGES else None
    candidates = [f"{package}.{chain}"] if package and f"{package}.{parts[0]}" in MODULES else []
    reasons = [attribute_missing(c) for c in [*candidates, chain] if c.split(".")[0] in MODULES]
    return None if None in reasons or not reasons else reasons[0]


def attribute_missing(chain: str) -> str | None:
    """Why a chain that starts with a project module does not resolve, or None."""
    parts = chain.split(".")
    # The longest prefix that is a module (accel.results.si: accel.results), then attributes.
    cut = max(i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
    module, attributes = ".".join(parts[:cut]), parts[cut:]
    if not attributes:
        return None
    node = bound_names(module_tree(module).body).get(attributes[0])
    if node is None:
        return f"{module} has no {attributes[0]}"
    if len(attributes) > 1 and isinstance(node, ast.ClassDef) and attributes[1] not in class_names(node):
        return f"{module}.{attributes[0]} has no {attributes[1]}"
    return None


def heading_titles(path: Path) -> list[str]:
    """The headings of a Markdown page, outside code blocks, without their #s and backticks."""
    text = FENCE.sub("", path.read_text())
    return [line.lstrip("#").strip().replace("`", "") for line in text.splitlines() if re.match(r"#{1,6} ", line)]


def slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen, result = {}, set()
    for title in heading_titles(path):
        base = slug(title)
        result.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return result


def page(name: str, source: Path) -> Path | None:
    """The page a reference names: the README and BENCHMARKS.md are the repository's; another page is relative to the
    referring file, else to the repository."""
    name = "README.md" if name == "README" else name
    for base in (ROOT,) if name in ("README.md", "BENCHMARKS.md") else (source.parent, ROOT):
        if (base / name).is_file():
            return base / name
    return None


def has_section(path: Path, title: str) -> bool:
    """Whether a heading of path starts with title (a reference may shorten a heading), ending at a word's end."""
    title = " ".join(title.replace("`", "").split())
    return any(t.startswith(title) and not t[len(title) : len(title) + 1].isalnum() for t in heading_titles(path))


def problems_in(text: str, source: Path, first_line: int = 1, functions: bool = True, links: bool = True) -> list[str]:
    """Every reference in text (from source, starting at first_line) that does not resolve, as 'file:line: why'."""
    found = []

    def report(start: int, why: str) -> None:
        found.append(
            f"{source.relative_to(ROOT) if source.is_relative_to(ROOT) else source}:"
            f"{first_line + text.count(chr(10), 0, start)}: {why}"
        )

    sections = list(SECTION.finditer(text))
    for match in sections:
        target, title = page(match["file"], source), " ".join(match["title"].split())
        if target is None:
            report(match.start(), f"no page {match['file']}")
        elif not has_section(target, title):
            report(match.start(), f'{match["file"]} has no section "{title}"')
    if links:
        for match in LINK.finditer(text):
            target = match["target"]
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            path = source if not name else (source.parent / name)
            if not path.exists():
                report(match.start(), f"link to a missing file {name}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                report(match.start(), f"{name or source.name} has no heading #{anchor}")
    for match in FILE.finditer(text):
        if any(section.start() <= match.start() < section.end() for section in sections):
            continue  # a section's page, checked above
        if not (ROOT / match["path"]).exists():
            report(match.start(), f"no file {match['path']}")
    if functions:
        for match in DOTTED.finditer(text):
            why = unresolved(match["chain"], source)
            if why:
                report(match.start(), f"{match['chain']}: {why}")
    return found


def markdown_problems(path: Path) -> list[str]:
    """A page's broken references; in docs/history/ the quoted code is its commit's and is not checked."""
    text = path.read_text()
    if "history" not in path.relative_to(ROOT).parts:
        return problems_in(text, path)
    problems, position = [], 0
    for fence in [*FENCE.finditer(text), None]:
        end = fence.start() if fence else len(text)
        problems += problems_in(text[position:end], path, 1 + text.count("\n", 0, position))
        position = fence.end() if fence else end
    return problems


def python_texts(path: Path):
    """(first line, text) of each comment block and each string constant with a space in it (docstrings, help texts,
    messages) of a module."""
    source = path.read_text()
    block, start, last = [], 0, -2
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            if token.start[0] != last + 1 and block:
                yield start, "\n".join(block)
                block = []
            if not block:
                start = token.start[0]
            block.append(token.string.lstrip("#"))
            last = token.start[0]
    if block:
        yield start, "\n".join(block)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"\s", node.value):
            yield node.lineno, node.value  # prose: a name or a path alone ("study.fc") is code, not a reference


def documented_files() -> list[Path]:
    pages = [README, ROOT / "BENCHMARKS.md", ROOT / "tests" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def python_files() -> list[Path]:
    files = [*MODULES.values(), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    return sorted(set(files) - {Path(__file__).resolve()})


def all_problems() -> list[str]:
    problems = [p for path in documented_files() for p in markdown_problems(path)]
    for path in python_files():
        for line, text in python_texts(path):
            problems += problems_in(text, path, line, links=False)
    return problems


def test_every_reference_to_a_section_file_or_function_resolves():
    problems = all_problems()
    assert not problems, "references that do not resolve:\n" + "\n".join(problems)


def test_a_renamed_section_function_or_page_is_caught():
    """The checker itself, on text planted in a scratch page beside the docs: each broken reference is found."""
    source = ROOT / "docs" / "planted.md"  # never written: only its folder matters, for relative pages
    good = (
        'docs/gpus.md, "Memory and micro-batches"; [flags](flags.md); [rules](gpus.md#memory-and-micro-batches);'
        " `step.train_step`, `accel.results.si`, `measured.MatmulCensus.int8_kernel`, train.py, tests/test_docs.py,"
        ' scipy.stats.t, README.md, "Two commands"'
    )
    assert problems_in(good, source) == []
    bad = {
        'docs/gpus.md, "Memory and macro-batches"': "has no section",
        'docs/nowhere.md, "Anything"': "no page",
        "[gone](gpus.md#no-such-heading)": "no heading",
        "[gone](nowhere.md)": "missing file",
        "`train.build_optimizer`": "train has no build_optimizer",
        "`measured.MatmulCensus.no_such_thing`": "MatmulCensus has no no_such_thing",
        "tests/test_nothing.py": "no file",
    }
    for text, why in bad.items():
        found = problems_in(text, source)
        assert len(found) == 1 and why in found[0], (text, found)
    lines = problems_in("one\ntwo `train.build_model`\n", source, first_line=10)
    assert lines == ["docs/planted.md:11: train.build_model: train has no build_model"]


def test_python_comments_and_strings_are_read_with_their_lines(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        '"""Doc: `step.train_step`."""\nx = 1  # first line\n# (BENCHMARKS.md, "A split\n# title")\n'
        'HELP = ("a help text (README.md, \\"Two"\n        " commands\\")")\n'
    )
    texts = list(python_texts(path))
    assert (2, ' first line\n (BENCHMARKS.md, "A split\n title")') in texts  # consecutive comment lines: one block
    assert (5, 'a help text (README.md, "Two commands")') in texts  # adjacent literals: one string
    assert (1, "Doc: `step.train_step`.") in texts


def block_lines(text: str) -> str:
    return results.block(text, "test")


def test_the_readme_shows_the_block_of_docs_results_md():
    """The README's table is exactly the one results.py takes from the committed docs/results.md."""
    page_text = (ROOT / "docs" / "results.md").read_text()
    assert block_lines(README.read_text()) == results.readme_block(page_text, "docs")


def test_the_readme_is_short_and_links_every_page():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert {p for p in pages if p not in text} == set()


@pytest.fixture
def suite(tmp_path) -> Path:
    """Two seeds of exp1, exp2, exp4 and exp5, each with its own accelerator results; report/ladder.png."""
    runs_dir = tmp_path / "runs"
    psnr = {"exp1": (20.0, 22.0), "exp2": (21.0, 22.5), "exp4": (19.0, 21.4), "exp5": (20.2, 21.9)}
    for experiment, values in psnr.items():
        for seed, value in enumerate(values):
            run_dir = suite_run(
                runs_dir,
                experiment,
                seed,
                value,
                model_bytes=65_000 if experiment == "exp4" else 452_000,
                sent_bytes_per_step=441_376 if experiment == "exp5" else None,
            )
            energy = {"eyeriss": 9.0 if experiment == "exp4" else 36.0, "tpu_v4i": 2.0 if experiment == "exp4" else 3.3}
            write_own_results(run_dir, dense_with(hw_rows(run_dir, energy)))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "ladder.png").write_bytes(b"\x89PNG made up")
    return runs_dir


def run_results(tmp_path: Path, runs_dir: Path, readme: str) -> subprocess.CompletedProcess:
    (tmp_path / "README.md").write_text(readme)
    code = (
        f"import sys, results; results.main(['--runs', {str(runs_dir)!r}, '--report', "
        f"{str(tmp_path / 'report')!r}, '--out', {str(tmp_path / 'docs' / 'results.md')!r}, '--readme', "
        f"{str(tmp_path / 'README.md')!r}]); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)


def test_results_writes_the_page_and_the_readme_block_from_the_runs_without_torch(suite, tmp_path):
    result = run_results(
        tmp_path,
        suite,
        "# Title\n\nbefore\n" + results.RESULTS_BEGIN + "\nold table\n" + results.RESULTS_END + "\nafter\n",
    )
    assert result.returncode == 0, result.stderr
    page_text = (tmp_path / "docs" / "results.md").read_text()
    readme = (tmp_path / "README.md").read_text()
    # The README keeps what is outside its markers and shows the page's block, its links relative to itself.
    assert readme.startswith("# Title\n\nbefore\n") and readme.endswith(results.RESULTS_END + "\nafter\n")
    assert "old table" not in readme and block_lines(readme) == results.readme_block(page_text, "docs")
    assert "](docs/ladder.png)" in readme and "](ladder.png)" in page_text
    assert (tmp_path / "docs" / "ladder.png").read_bytes() == b"\x89PNG made up"
    # The stamp: commit, scene, seeds, machine (no GPU in these summaries: this machine's CPU).
    stamp = block_lines(page_text).splitlines()[0]
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    assert f"Commit {head.strip() or 'unknown'}" in stamp  # outside a git checkout: unknown
    assert "scene builtin; seeds 0, 1;" in stamp and "no GPU" in stamp
    # The main table: every experiment, PSNR over the seeds and against exp1, model size, energy per architecture.
    lines = [line for line in block_lines(page_text).splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {
        cells[0]: dict(zip(header, cells))
        for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])
    }
    assert list(rows) == ["exp1", "exp2", "exp4", "exp5"]
    assert rows["exp1"]["test PSNR (dB)"] == "21.00 ± 12.71" and rows["exp1"]["test PSNR vs exp1"] == "—"
    # exp4 - exp1 by seed: -1.0 and -0.6, mean -0.8 ± 12.706 * 0.2828 / sqrt(2) = 2.54
    assert rows["exp4"]["test PSNR vs exp1"] == "-0.80 ± 2.54 (not significant)"
    assert (rows["exp4"]["model size"], rows["exp1"]["model size"]) == ("65 kB", "452 kB")
    assert rows["exp4"]["eyeriss energy/frame (J)"] == "9.000 ± 0.000"
    assert rows["exp4"]["tpu_v4i energy/frame (J)"] == "2.000 ± 0.000"
    assert rows["exp4"]["precision"] == "ternary-int8" and rows["exp4"]["seeds"] == "0, 1"
    # Below the block: the report's own sections.
    for title in ("Seeds and intervals", "Precision ladder", "Bytes on the wire", "Empty-space skipping"):
        assert f"\n## {title}\n" in page_text


def test_the_stamp_names_the_commits_that_trained_the_runs_and_says_where_runs_do_not_record_theirs(suite, tmp_path):
    summaries = sorted(suite.glob("*/summary.json"))
    for index, path in enumerate(summaries):
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, "commit": "abc1234" if index % 2 else "def5678"}))
    readme = "# Title\n" + results.RESULTS_BEGIN + "\n" + results.RESULTS_END + "\n"
    assert run_results(tmp_path, suite, readme).returncode == 0
    stamp = block_lines((tmp_path / "docs" / "results.md").read_text()).splitlines()[0]
    assert stamp.startswith("**Commit abc1234, def5678, runs finished"), stamp
    summary = json.loads(summaries[0].read_text())
    del summary["commit"]
    summaries[0].write_text(json.dumps(summary))
    assert run_results(tmp_path, suite, readme).returncode == 0
    stamp = block_lines((tmp_path / "docs" / "results.md").read_text()).splitlines()[0]
    assert "(the checkout that wrote this page: 1 of the runs predate recording theirs)" in stamp, stamp


def test_results_without_a_readme_block_is_one_line(suite, tmp_path):
    result = run_results(tmp_path, suite, "# A README without markers\n")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and results.RESULTS_BEGIN in result.stderr


def test_docs_results_md_is_stamped_with_its_commit_scene_and_seeds():
    stamp = block_lines((ROOT / "docs" / "results.md").read_text()).splitlines()[0]
    assert re.match(r"\*\*Commit [0-9a-f]{7}", stamp) and "scene " in stamp and "seeds " in stamp, stamp
