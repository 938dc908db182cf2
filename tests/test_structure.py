"""The house drawn from imports: every `pipeline` module's imports (also those inside functions)
form no cycle, and no stage reaches back into the task layer (`tasks.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the pipeline modules it imports (relative imports resolved)."""
    files = {_module_name(p): p for p in (ROOT / "pipeline").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from . import x` may name a module
                    candidate = f"{base}.{alias.name}"
                    targets.add(candidate if candidate in files else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name} | {t for t in targets if t == "tasks"}
    return graph


def test_the_stages_import_no_cycle():
    graph = import_graph()
    assert {"pipeline.checkpoint", "pipeline.presets", "pipeline.models", "pipeline.train"} <= graph.keys()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError(" -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_checkpoint_object_does_not_need_the_preset_factory():
    graph = import_graph()
    for stage in ("pipeline.checkpoint", "pipeline.merge", "pipeline.export", "pipeline.train", "pipeline.eval"):
        assert "pipeline.presets" not in graph[stage], stage


def test_no_stage_imports_the_task_layer():
    assert all("tasks" not in targets for targets in import_graph().values())


def test_every_mode_of_the_gpu_box_scripts_calls_functions_the_script_defines():
    """The remote-GPU scripts (scripts/remote-gpu/) run far from here (a lost function is found only
    when a paid GPU call fails): each name a `case` arm calls first is a function of the script or a
    shell builtin."""
    import re
    import subprocess

    builtins = {"echo", "exit", "set", "cp", "bash", "exec", "wait", "cat", "ls", "rm", "mkdir", "local", "time", "tee"}
    scripts = sorted((ROOT / "scripts" / "remote-gpu").glob("*_gpu.sh"))
    assert len(scripts) >= 3, "the remote-GPU scripts moved: update this test's folder"
    for script in scripts:
        text = script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)
        defined = set(re.findall(r"^(\w[\w-]*)\(\) \{", text, re.M))
        if 'case "$1" in' not in text:
            continue
        case = text[text.rindex('case "$1" in'):]
        called = {m for arm in re.findall(r"^  [\w+|-]+\)(.*)$", case, re.M)
                  for m in re.findall(r"(?:^|[;&|]\s*|&&\s*)\s*([a-z][\w-]*)", arm)}
        missing = called - defined - builtins
        assert not missing, f"{script.name}: modes call undefined {sorted(missing)}"
