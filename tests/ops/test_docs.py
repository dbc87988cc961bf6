"""The documents stay true to the code: the settings table, links, and the paths they name."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.procs import free_port
from tests import settings_table
from tests.fixtures_procs import Proxy, Sim
from tests.llm_project import plugin_args

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "deploy" / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("docs/*/*.md"),
        *ROOT.glob("bench/*.md"),
    ]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:proxy|bench|deploy|tests|docs|\.ci)/[\w./-]*)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# A code block the README marks for pytester: a file of the user's project, or commands to run.
MARKED = re.compile(r"^<!-- pytester: (\S+) -->\n```\w*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def prose(path: Path) -> str:
    """The document without its code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(path).splitlines() if line.startswith("#")}


def test_the_readme_settings_table_is_rendered_from_the_settings() -> None:
    readme = settings_table.README.read_text(encoding="utf-8")
    assert settings_table.embedded(readme) == settings_table.render(), (
        "README.md's settings table differs from proxy/options.py: "
        "rewrite it with `python3 -m tests.settings_table`"
    )


def test_every_setting_has_a_row_in_the_readme() -> None:
    table = settings_table.embedded(settings_table.README.read_text(encoding="utf-8"))
    for option in settings_table.OPTIONS:
        assert f"`{option.flag}` | `{option.env}`" in table


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move details to docs/"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids(DOCUMENTS))
def test_relative_links_resolve(document: Path) -> None:
    for target in LINK.findall(prose(document)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.exists(), f"{document.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{document.name}: no heading for {target}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids(DOCUMENTS))
def test_the_repository_paths_named_exist(document: Path) -> None:
    for name in REPO_PATH.findall(document.read_text(encoding="utf-8")):
        path = ROOT / name.rstrip("/")
        assert path.exists() or path.with_suffix(".py").exists(), f"{document.name}: {name}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids(DOCUMENTS))
def test_no_lab_notes(document: Path) -> None:
    """Documents are for users: no issue numbers or run letters, which mean nothing to them."""
    text = document.read_text(encoding="utf-8")
    assert not re.search(r"\b[Ii]ssue [0-9]|\b[Rr]uns? [A-I]\b", text), document.name


def test_the_persian_quickstart_runs_what_the_readme_runs() -> None:
    """The translation's code blocks are the README's, with Gilas as the upstream: a command or
    snippet changed in the README fails here until the translation follows it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = FENCE.findall((ROOT / "docs" / "fa" / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 5
    for block in blocks:
        assert block.replace("https://api.gilas.io/v1", "https://api.openai.com/v1") in readme


def quickstart() -> tuple[str, str, str]:
    """The README Quickstart's Python snippet, its curl command (an inline code span over
    lines) and the offline block's rotation command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Quickstart\n")
    text = readme[start : readme.index("\n## ", start + 1)]
    python = re.search(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    curl = re.search(r"`(curl -si [^`]*)`", prose(ROOT / "README.md"))
    rotate = re.search(r"^(curl -X POST \S+/_sim/fingerprint .*)$", text, re.MULTILINE)
    assert python and curl and rotate
    return python.group(1), " ".join(curl.group(1).split()), rotate.group(1)


def test_the_readme_quickstart_runs_as_written(proxy: Proxy, sim: Sim) -> None:
    """The Quickstart run as a user would, against a real proxy before the sim: the snippet
    prints what its comments say, curl with the same key HITs the snippet's answer, and after
    the sim's rotation a repeat stays a HIT until a MISS brings the new fingerprint."""
    snippet, curl, rotate = quickstart()
    code = snippet.replace("http://127.0.0.1:8080", proxy.url)
    ran = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},  # no forward proxy from the test machine's environment
    )
    assert ran.returncode == 0, ran.stderr
    printed = re.findall(r"^print\(.*\)\s+# (.*)$", snippet, re.MULTILINE)
    assert ran.stdout.splitlines() == printed == ["MISS 12345", "HIT"]

    def shell(command: str) -> str:
        command = command.replace("http://127.0.0.1:8080", proxy.url)
        command = command.replace("http://127.0.0.1:8090", sim.url)
        env = {"PATH": "/usr/bin:/bin", "KEY": "sk-..."}  # the snippet's key
        done = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=30, env=env, check=True
        )
        return done.stdout

    assert re.search(r"^X-Repro-Cache: HIT\r?$", shell(curl), re.MULTILINE | re.IGNORECASE)
    shell(rotate)
    assert sim.control("GET", "fingerprint")["fingerprint"] == "fp_new"
    assert re.search(r"^X-Repro-Cache: HIT\r?$", shell(curl), re.MULTILINE | re.IGNORECASE)
    learn = shell(curl.replace("Name a colour.", "Name a river."))
    assert re.search(r"^X-Repro-Fingerprint: fp_new\r?$", learn, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^X-Repro-Cache: MISS\r?$", shell(curl), re.MULTILINE | re.IGNORECASE)


def test_what_the_quickstart_imports_the_readme_says_to_install() -> None:
    """`pip install .` brings the package's dependencies only: a module the snippet imports
    beyond them is named in a `pip install` of the README (a fresh venv would fail without)."""
    snippet, _, _ = quickstart()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies = {
        re.split(r"[\s\[<>=;]", name)[0] for name in pyproject["project"]["dependencies"]
    }
    installed = set(re.findall(r"`pip install ([\w-]+)`", readme))
    imported = set(re.findall(r"^(?:from|import) (\w+)", snippet, re.MULTILINE))
    assert imported and imported <= dependencies | installed, imported - dependencies


def test_the_readme_ci_recipe_works_as_written(project: pytest.Pytester, sim: Sim) -> None:
    """The CI section's snippets, run as a user would: its files written into a project, its
    commands run in order, each a pytest process of its own. Recording reaches the sim (through
    REPRO_UPSTREAM, as documented); every other command runs with the upstream gone and without
    OPENAI_API_KEY."""
    marked = MARKED.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    commands = [text for target, text in marked if target == "run"]
    assert len(commands) == 1 and len(marked) > 1
    for target, text in marked:
        if target != "run":
            (project.path / target).parent.mkdir(parents=True, exist_ok=True)
            (project.path / target).write_text(text, encoding="utf-8")
    ran = 0
    for line in commands[0].splitlines():
        words = shlex.split(line, comments=True)
        env = dict(word.split("=", 1) for word in words if "=" in word and word[0].isupper())
        argv = [word for word in words if word.split("=", 1)[0] not in env]
        assert argv[0] == "pytest", line
        recording = any(word.startswith("--llm-record-mode=") for word in argv[1:])
        env["REPRO_UPSTREAM"] = sim.v1 if recording else f"http://127.0.0.1:{free_port()}/v1"
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            result = project.runpytest_subprocess(*plugin_args(), *argv[1:])
        assert result.ret == 0, result.stdout.str()
        ran += 1
    assert ran == 2
    assert (project.path / "tests/cassettes/llm.jsonl").is_file()
    assert len(sim.llm_requests()) == 1  # recorded once, replayed offline


MODULE_LINES = 460
"""About 450 lines, the size a module may reach before it is holding more than one idea."""


def test_no_module_outgrows_one_idea() -> None:
    """A module past MODULE_LINES is split along its seams (as caching.py was into caching,
    recording and failopen) before it grows further: a newcomer reads the design from
    `ls -R proxy`, not from section comments inside one file."""
    sizes = {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8").count("\n")
        for path in (ROOT / "proxy").rglob("*.py")
    }
    assert len(sizes) > 100
    assert {path: n for path, n in sizes.items() if n > MODULE_LINES} == {}


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md's tables name each module of proxy/ by its name or its path (a
    package's `__init__.py` only where it holds more than imports; the sim and the audit as one)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    first_cells = re.findall(r"^\| (`[^|]+`) \|", text, re.MULTILINE)
    named = {name for cell in first_cells for name in re.findall(r"`([\w/.]+)`", cell)}
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if len(relative.parts) > 3 or (path.name == "__init__.py" and path.stat().st_size < 400):
            continue
        assert path.name in named or str(relative) in named, f"{relative} is not in the map"
