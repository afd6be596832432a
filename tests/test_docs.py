"""The docs are meant to be copied from: every flag a command in README.md or docs/FINDINGS.md names must be
one its script accepts, and every `module.name` README.md names must exist (a renamed flag or function
would otherwise leave the docs quietly wrong). FINDINGS.md is a lab notebook: it may name code it removed.
The README reads in five minutes: short, a picture first, the set-up commands near the top, the reading guide
next, then at most three results tables. Every pointer in the code (a docs section, a README section, a file)
leads somewhere."""
import functools
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/FINDINGS.md", "docs/board-world.md"]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MODULES = "world|rewards|model|sample|grpo|focus|probe|shortcut|train|config|runs|report|bench|compare"
NAME = re.compile(rf"(?<![\w/.])({MODULES})\.([A-Za-z_]\w*)")
FILE_TYPES = {"py", "pt", "md", "png", "gif", "jsonl"}  # train.py, shortcut.pt, report.md: files, not names


@functools.lru_cache(maxsize=None)
def flags_of(script):
    """The set of --flags that `python script --help` lists."""
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{script} --help failed:\n{out.stderr}"
    return frozenset(FLAG.findall(out.stdout))


def spans(text):
    """Each fenced code block's lines and each inline `code` span (which may wrap across lines)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    lines = [line for b in blocks for line in b.splitlines()]
    return lines + re.findall(r"`([^`]+)`", rest)


def commands(text):
    """(script, flags) for every `python X.py ...` in the text, and (None, flags) for bare flag spans."""
    found = []
    for span in spans(text):
        parts = re.split(r"python\s+(\w+\.py)", span)  # a span may wrap after "python"
        if len(parts) == 1:
            if span.lstrip().startswith("--"):
                found.append((None, FLAG.findall(span)))
            continue
        for script, tail in zip(parts[1::2], parts[2::2]):
            found.append((script, FLAG.findall(tail.split(";")[0].split("&&")[0].split("|")[0])))
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_flag_exists(doc):
    found = commands((ROOT / doc).read_text())
    assert any(s == "train.py" for s, _ in found), "no train.py command found: the parser is broken"
    scripts = sorted({s for s, _ in found if s} | {"train.py"})
    for s in scripts:
        assert (ROOT / s).exists(), f"{doc} runs {s}, which does not exist"
    known = frozenset().union(*(flags_of(s) for s in scripts))
    bad = [(s or "(bare)", f) for s, fl in found for f in fl if f not in (flags_of(s) if s else known)]
    assert not bad, f"{doc} names flags its scripts do not accept: {sorted(set(bad))}"


def test_a_wrong_flag_is_caught():
    """The check itself can fail: a made-up flag on train.py is reported."""
    (script, fl), = commands("`python train.py --out x --no-such-flag 3`")
    assert script == "train.py" and "--no-such-flag" in fl and "--no-such-flag" not in flags_of("train.py")
    assert commands("(`python\nshortcut.py --ckpt DIR`)") == [("shortcut.py", ["--ckpt"])]  # wrapped after python


def missing_names(text):
    """Every `module.name` in the text's code spans that the module does not define, e.g. ['sample.nope']
    (conftest.py puts the project's modules on the path)."""
    found = {m.groups() for span in spans(text) for m in NAME.finditer(span) if m.group(2) not in FILE_TYPES}
    return sorted(f"{mod}.{name}" for mod, name in found if not hasattr(importlib.import_module(mod), name))


def test_every_function_the_readme_names_exists():
    text = (ROOT / "README.md").read_text()
    assert len({m.groups() for span in spans(text) for m in NAME.finditer(span)}) > 10, "the name parser is broken"
    assert missing_names(text) == []


def test_a_wrong_name_is_caught():
    said = "`grpo.grpo_loss`, `sample.no_such_function` and `out/report.md`"
    assert missing_names(said) == ["sample.no_such_function"]


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def test_the_readme_is_short_opens_with_a_picture_and_sets_up_early():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines"
    guide = lines.index("## Reading it in an afternoon")
    assert guide < 80 - 20, "the reading guide must start early enough to be read within the first 80 lines"
    results = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    tables = re.findall(r"^\| --- ", results, re.M)  # one separator row per table
    assert 1 <= len(tables) <= 3, f"the results hold {len(tables)} tables"
    pictures = IMAGE.findall(text)
    assert pictures and text.index(pictures[0]) < text.index("\n## "), "no picture before the first section"
    assert all((ROOT / p).is_file() for p in pictures), [p for p in pictures if not (ROOT / p).is_file()]
    assert sum((ROOT / p).stat().st_size for p in pictures) < 1_000_000  # the committed pictures stay small
    setup = [i for i, line in enumerate(lines) if line.startswith("pip install -r requirements.txt && python")]
    assert len(setup) == 2 and max(setup) < 40, setup


WORDS_OF_THE_MACHINERY = r"session|device time|timeout_s|give_back|budget_left|issue [0-9]"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_no_word_of_how_the_work_is_run():
    """The repository speaks of the project alone (this file names the words it looks for, so tests/ is left out)."""
    out = subprocess.run(["git", "grep", "-n", "-i", "-E", WORDS_OF_THE_MACHINERY, "--", ".", ":!tests"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr  # 1: nothing found
    assert out.stdout == "", out.stdout


SOURCES = sorted(ROOT.glob("*.py")) + [ROOT / "gpu_check.sh", ROOT / ".ci" / "run"]
SECTION = re.compile(r"(docs/[\w-]+\.md),? sections? (\d+(?:(?:, | and )\d+)*)")
README_SECTION = re.compile(r'README(?::| \() ?"([^"]+)"')
FILE = re.compile(r"(?<![\w./$-])((?:[\w-]+/)*[\w-]+\.(?:py|md|sh))\b")
OUTPUT = re.compile(r"(?:^|/)report\.md$")  # a run writes it (out/report.md): not a file of the repository


def broken_pointers(text):
    """What a text points to that is not there: a docs/X.md section number without its '## N.' heading, a README
    section (README: "Heading" or README ("Heading")) without its heading, a file (x.py, docs/x.md) missing."""
    bad = []
    for doc, numbers in SECTION.findall(text):
        heads = (ROOT / doc).read_text() if (ROOT / doc).exists() else ""
        bad += [f"{doc} section {n}" for n in re.split(r", | and ", numbers) if f"\n## {n}. " not in heads]
    readme = (ROOT / "README.md").read_text()
    bad += [f'README "{h}"' for h in README_SECTION.findall(text) if not re.search(rf"^##+ {re.escape(h)}$", readme,
                                                                                    re.M)]
    bad += [f for f in FILE.findall(text) if not OUTPUT.search(f) and not any((ROOT / d / f).exists()
                                                                                for d in ("", "tests"))]
    return bad


@pytest.mark.parametrize("path", SOURCES + [ROOT / "README.md"], ids=lambda p: p.name)
def test_every_pointer_leads_somewhere(path):
    assert broken_pointers(path.read_text()) == []


def test_a_broken_pointer_is_caught():
    said = ('docs/FINDINGS.md section 12 and docs/board-world.md, sections 4, 99; README ("No such part"); '
            'README: "Where the rest lives"; train.py, nothing.py and docs/nothing.md')
    assert broken_pointers(said) == ["docs/board-world.md section 99", 'README "No such part"', "nothing.py",
                                     "docs/nothing.md"]
