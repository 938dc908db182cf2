"""The docs cannot drift from the code: the README stays a ten-minute read, every `invoke` command
in the README and docs/ parses against the real task collection (invoke's own loader and parser,
not a regex over tasks.py) and sets only real config fields, and no relative link points to a
missing file or heading.

What counts as a command: an inline code span, or a line of a shell code block (with its `\\`
continuations; blocks marked `text`, `yaml`, `python`, `json` or `toml` are not shell), that runs
`invoke`. Shell variables assigned in the same block (`S="--set ..."`)
are expanded first, so their `--set` fields are checked too. A fenced block whose info string
contains `history` is a quoted record and is not parsed (none is needed today)."""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 350
# Tasks the README already names for work landing in parallel (issue #36); each is parsed as soon as
# tasks.py defines it. Remove a name once it exists.
PLANNED_TASKS: set[str] = set()

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INVOKE = re.compile(r"(?:^|(?<=[\s/(]))invoke(?=\s)")
SET_VAR = re.compile(r"""^\s*(?:export\s+)?([A-Za-z_]\w*)=(?:"([^"]*)"|'([^']*)'|(\S*))""", re.M)


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "scripts").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _rel(path: Path, root: Path = ROOT) -> str:
    return str(path.relative_to(root))


# --- invoke commands -------------------------------------------------------------------------------

@cache
def _parser():
    from invoke import Collection, Program
    from invoke.loader import FilesystemLoader
    from invoke.parser import Parser, ParserContext

    module, _ = FilesystemLoader(start=str(ROOT)).load("tasks")
    collection = Collection.from_module(module)
    return Parser(initial=ParserContext(args=Program().core_args()), contexts=collection.to_contexts()), collection


def _code_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(COMMENT.sub("", text))]


def _prose(text: str) -> str:
    """The text outside fenced blocks and HTML comments."""
    return FENCE.sub("", COMMENT.sub("", text))


def _strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def _block_commands(block: str) -> list[str]:
    """Shell lines of a fenced block (continuations joined, comments dropped, variables expanded)."""
    lines, current = [], ""
    for raw in block.splitlines():
        line = _strip_comment(raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    variables: dict[str, str] = {}
    out = []
    for line in lines:
        for m in SET_VAR.finditer(line):
            variables[m.group(1)] = next(g for g in m.groups()[1:] if g is not None)
        out.append(re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), ""), line))
    return out


def _invocations(line: str) -> list[list[str]]:
    """Each `invoke ...` on a shell line, as its argument list (up to the next && ; | or )."""
    found = []
    for m in INVOKE.finditer(line):
        rest = re.split(r"&&|\|\||[;|)]", line[m.end():], maxsplit=1)[0]
        try:
            found.append(shlex.split(rest))
        except ValueError:  # an unbalanced quote in prose: keep the words
            found.append(rest.split())
    return found


def doc_commands() -> list[tuple[str, list[str]]]:
    """(file, argv after `invoke`) for every invoke command in the README and docs/."""
    commands = []
    for path in doc_files():
        text = path.read_text()
        for info, block in _code_blocks(text):
            if "history" in info.split() or info.split()[:1] in (["text"], ["yaml"], ["python"], ["json"], ["toml"]):
                continue  # a record, or not shell
            for line in _block_commands(block):
                commands += [(_rel(path), argv) for argv in _invocations(line)]
        for m in INLINE.finditer(_prose(text)):
            span = " ".join(m.group(1).split())
            if span.startswith(("invoke ", ".venv/bin/invoke ")) or re.search(r"(?:^|[;&|]\s*)invoke\s", span):
                commands += [(_rel(path), argv) for argv in _invocations(span)]
    return commands


@cache
def config_fields() -> set[str]:
    """Every settable `section.field` (and top-level field) of pipeline.config.Config."""
    from pipeline.config import Config

    names = set()
    for top in dataclasses.fields(Config):
        kind = typing.get_type_hints(Config)[top.name]
        if dataclasses.is_dataclass(kind):
            names |= {f"{top.name}.{f.name}" for f in dataclasses.fields(kind)}
        else:
            names.add(top.name)
    return names


def problems_of(argv: list[str]) -> list[str]:
    """What is wrong with one `invoke` argument list: unknown task or flag, unknown config field."""
    from invoke.parser import ParseError

    parser, collection = _parser()
    if argv and not argv[0].startswith("-") and argv[0] in PLANNED_TASKS and argv[0] not in collection.task_names:
        return []
    argv = [a for a in argv if a not in ("...", "…")]
    if argv[:1] in (["--help"], ["-h"]) and len(argv) > 1:  # `invoke --help TASK`, which invoke's CLI resolves
        return [] if argv[1] in collection.task_names else [f"invoke --help {argv[1]}: no such task"]
    try:
        result = parser.parse_argv(argv)
    except (ParseError, ValueError) as exc:  # ValueError: a flag's value of the wrong type
        return [f"invoke {' '.join(argv)}: {exc}"]
    problems = []
    core = result[0].args
    if len(result) == 1 and not any(core[flag].value for flag in ("list", "help", "version")):
        problems.append(f"invoke {' '.join(argv)}: no task named")
    for ctx in result[1:]:
        for override in ctx.args["set"].value if "set" in ctx.args else []:
            name = override.split("=", 1)[0]
            if "=" not in override or name not in config_fields():
                problems.append(f"invoke {ctx.name} --set {override}: {name!r} is not a config field")
    return problems


def test_readme_is_a_ten_minute_read():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_the_docs_have_commands_to_check():
    commands = doc_commands()
    readme = [argv for path, argv in commands if path == "README.md"]
    assert len(readme) >= 10 and len(commands) >= 100, (len(readme), len(commands))
    # the extraction sees the forms the docs use: continuation lines, variables, inline spans
    assert ["train", "--config", "my.yaml", "--gpus", "4"] in readme


def test_every_invoke_command_in_the_docs_names_real_tasks_flags_and_fields():
    problems = [f"{path}: {p}" for path, argv in doc_commands() for p in problems_of(argv)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("argv, wrong", [
    (["trian", "--config", "x.yaml"], "No idea what 'trian'"),
    (["train", "--gpu", "2"], "No idea what '--gpu'"),
    (["train", "--set", "train.stepz=3"], "'train.stepz' is not a config field"),
    (["eval", "--set", "evaluation.out=x"], "'evaluation.out' is not a config field"),
    (["--help", "trian"], "no such task"),
])
def test_a_drifted_command_is_caught(argv, wrong):
    assert any(wrong in p for p in problems_of(argv)), problems_of(argv)


def test_good_commands_pass():
    for argv in (["train", "--set", "train.steps=3", "--set", "artifacts=a", "--resume"], ["--list"],
                 ["--help", "verify-candle"], ["eval", "--rescore", "DIR", "--data", "D"]):
        assert problems_of(argv) == [], argv


def test_commands_are_read_from_blocks_and_spans():
    block = 'S="--config c.yaml --set train.steps=2"\ninvoke train $S \\\n  --set eval.limit=3 && invoke merge $S  # note\n'
    lines = _block_commands(block)
    argvs = [argv for line in lines for argv in _invocations(line)]
    assert argvs == [["train", "--config", "c.yaml", "--set", "train.steps=2", "--set", "eval.limit=3"],
                     ["merge", "--config", "c.yaml", "--set", "train.steps=2"]]
    assert _invocations("MOSHI_SERVER=x .venv/bin/invoke serve --port 9") == [["serve", "--port", "9"]]


# --- links ---------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path.read_text()), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    text = INLINE.sub("", _prose(path.read_text()))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{_rel(path, root)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{_rel(path, root)}: {target} (no such heading in {_rel(dest, root)})")
    return broken


def test_no_relative_link_in_the_docs_is_broken():
    checked = [p for p in doc_files() if LINK.search(_prose(p.read_text()))]
    assert ROOT / "README.md" in checked and len(checked) >= 5
    broken = [b for path in doc_files() for b in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading, (with) punctuation\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#real-heading-with-punctuation) [gone](c.md) [bad](b.md#nope) "
                    "![pic](c.png) `[code](d.md)` <!-- [hidden](e.md) --> [web](https://x.org/y.md)\n"
                    "```\n[block](f.md)\n```\n")
    assert broken_links(page, tmp_path) == ["a.md: c.md (no such file)", "a.md: b.md#nope (no such heading in b.md)",
                     "a.md: c.png (no such file)"]


def test_slug_matches_githubs_anchors():
    # anchors GitHub gave these headings (by hand, from GitHub's rule: lower case, drop punctuation
    # other than - and _, spaces to -)
    assert slug("Served starts on the full organism (issue #16, 2026-12-06, evening)") == \
        "served-starts-on-the-full-organism-issue-16-2026-12-06-evening"
    assert slug("Real-time streams per GPU (`invoke bench --what serve`; `scripts/remote-gpu/runtime_gpu.sh serve`)") \
        == "real-time-streams-per-gpu-invoke-bench---what-serve-scriptsremote-gpuruntime_gpush-serve"
