"""The package's architecture rules, checked statically on the source (no saesteer import needed).

Rules (docs/ARCHITECTURE.md, developers' guide):

* every module in ``src/saesteer`` has at most ``MAX_LINES`` lines, every function at most
  ``MAX_FUNCTION_LINES`` (from its ``def`` to its last line, docstring included);
* no import cycle between saesteer modules (imports run at module import time);
* no private name (one leading underscore, dunders excluded) of one module used from another module:
  neither ``from saesteer.x import _name`` nor ``something._name`` where ``_name`` is defined only in
  other saesteer modules;
* layers point one way (``LAYERS``, lowest first): a module imports only from its own or lower layers;
* saesteer's own modules are imported at module level. Inside a function only when the imported module
  needs an optional dependency (``OPTIONAL_DEPENDENCIES``, directly or through the saesteer modules it
  imports), or where ``ALLOWED_FUNCTION_IMPORTS`` says why. Third-party imports are never flagged.

``KNOWN_*`` lists name offenders that are being reworked elsewhere; each entry is temporary (aim: empty).
Each failure message lists every offender as ``file:line``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "saesteer"
MAX_LINES = 400
MAX_FUNCTION_LINES = 60

# Lowest layer first. A module belongs to the layer of its longest matching entry (the module itself or a
# package above it); the entry ``saesteer`` means the top-level ``saesteer/__init__.py`` only (the public
# facade, beside the CLI and the web app, which read its ``__version__``).
# Within ``evaluation/``, the measures that the sweep records (text metrics, feature facts, readback,
# steer score...) sit below the sweep; the rest of the folder (compare, feature cards, HTML reports,
# plots) sits above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("saesteer.errors", "saesteer.io", "saesteer.net", "saesteer.locks", "saesteer.outputs",
                    "saesteer.config", "saesteer.dtypes", "saesteer.assets")),
    ("models, saes", ("saesteer.models", "saesteer.saes", "saesteer.defaults")),
    ("steering", ("saesteer.steering",)),
    ("engine", ("saesteer.engine",)),
    ("measures, Steerer", ("saesteer.steerer",
                           "saesteer.evaluation.activations", "saesteer.evaluation.chance",
                           "saesteer.evaluation.facts_table",
                           "saesteer.evaluation.feature_facts", "saesteer.evaluation.fingerprint",
                           "saesteer.evaluation.readback", "saesteer.evaluation.reconstruction",
                           "saesteer.evaluation.reference", "saesteer.evaluation.steer_score",
                           "saesteer.evaluation.strength", "saesteer.evaluation.text_metrics",
                           "saesteer.evaluation.token_text", "saesteer.evaluation.word_rank")),
    ("sweep, training", ("saesteer.sweep", "saesteer.training")),
    ("evaluation, reports", ("saesteer.evaluation", "saesteer.strength")),
    ("applications", ("saesteer.validation",)),
    ("interfaces", ("saesteer.cli", "saesteer.web", "saesteer")),
]

# Function-level imports of saesteer modules that are wanted, keyed by (importing module, imported module).
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {}

# Import names of the optional extras in pyproject.toml (web, ray, oracle): a saesteer module that needs one
# of them at import time is imported lazily by the modules that work without the extra.
OPTIONAL_DEPENDENCIES = {"fastapi", "uvicorn", "pydantic", "httpx", "selenium", "starlette", "ray",
                         "transformer_lens"}

# --- Temporary: known offenders in areas still being reworked by others (remove entries as they go). ---
KNOWN_LONG_MODULES: set[str] = set()
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE_USES: set[tuple[str, str]] = set()          # (using module, private name)
KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()        # (importing module, imported module)
KNOWN_FUNCTION_IMPORTS: set[tuple[str, str]] = set()      # (importing module, imported module)
# Functions over MAX_FUNCTION_LINES, as "module:qualified name", each owned by another open issue's rework.
KNOWN_LONG_FUNCTIONS: set[str] = set()


@dataclass
class Import:
    target: str          # the saesteer module imported
    names: tuple[str, ...]
    line: int
    in_function: bool
    type_only: bool      # under ``if TYPE_CHECKING:``


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)
    third_party: set[str] = field(default_factory=set)  # top-level packages imported at module import time

    @property
    def where(self) -> str:
        return str(self.path.relative_to(SRC.parent))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _collect_imports(mod: Module, names: set[str]) -> None:
    def resolve(module: str, alias: str) -> str:
        sub = f"{module}.{alias}"
        return sub if sub in names else module

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), in_function, type_only)
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:  # relative import: resolve against this module's package
                    base = mod.name.split(".")
                    if mod.path.name != "__init__.py":
                        base = base[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([module] if module else []))
                if not (in_function or type_only or child.level):
                    mod.third_party.add(module.split(".")[0])
                if module == PACKAGE or module.startswith(PACKAGE + "."):
                    targets: dict[str, list[str]] = {}
                    for a in child.names:
                        targets.setdefault(resolve(module, a.name), []).append(a.name)
                    for target, imported in targets.items():
                        mod.imports.append(Import(target, tuple(imported), child.lineno, in_function, type_only))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if not (in_function or type_only):
                        mod.third_party.add(a.name.split(".")[0])
                    if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                        mod.imports.append(Import(a.name, (), child.lineno, in_function, type_only))
            else:
                visit(child, in_function, type_only)

    visit(mod.tree, False, False)


def _load() -> dict[str, Module]:
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        modules[_module_name(path)] = Module(_module_name(path), path, len(text.splitlines()),
                                             ast.parse(text, filename=str(path)))
    for mod in modules.values():
        _collect_imports(mod, set(modules))
    return modules


MODULES = _load()


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest entry that is ``module`` or a package above it."""
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry if entry == PACKAGE else (module == entry or module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = index, len(entry)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it (or its package) to LAYERS in {__file__}")
    return best


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _privates(tree: ast.Module) -> tuple[set[str], list[tuple[str, int]]]:
    """Private names a module defines (functions, classes, assigned names and attributes, arguments,
    import aliases) and the private attributes it reads on anything but ``self``/``cls``/``super()``."""
    defined, used = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Attribute):
            if isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            if _private(node.attr):
                used.append((node.attr, node.lineno))
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add(node.asname or node.name.split(".")[0])
    return {n for n in defined if _private(n)}, used


# ------------------------------------------------------------------------------------------- the tests


def test_every_module_is_in_a_layer():
    missing = [m for m in MODULES if m != PACKAGE and not any(
        m == e or m.startswith(e + ".") for _, entries in LAYERS for e in entries if e != PACKAGE)]
    assert not missing, "modules in no layer (add them to LAYERS):\n" + "\n".join(missing)


def test_modules_are_at_most_400_lines():
    long = [f"{m.where}: {m.lines} lines" for m in MODULES.values()
            if m.lines > MAX_LINES and m.name not in KNOWN_LONG_MODULES]
    assert not long, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(long)


def functions_of(tree: ast.AST) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, lines)`` of every function and method, nested ones included."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_functions_are_at_most_60_lines():
    found = {f"{m.name}:{name}": (f"{m.where}:{line}", lines)
             for m in MODULES.values() for name, line, lines in functions_of(m.tree)}
    long = [f"{where} {key}: {lines} lines" for key, (where, lines) in found.items()
            if lines > MAX_FUNCTION_LINES and key not in KNOWN_LONG_FUNCTIONS]
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n"
                      + "\n".join(long))
    stale = sorted(k for k in KNOWN_LONG_FUNCTIONS if k not in found or found[k][1] <= MAX_FUNCTION_LINES)
    assert not stale, "KNOWN_LONG_FUNCTIONS entries that are short now (or gone): remove them\n" + "\n".join(stale)


def _runtime_graph() -> dict[str, list[Import]]:
    return {name: [i for i in mod.imports if not i.in_function and not i.type_only and i.target != name]
            for name, mod in MODULES.items()}


def _strongly_connected(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = [e.target for e in graph.get(node, []) if e.target in graph]
            if i < len(targets):
                work.append((node, i + 1))
                nxt = targets[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    group.append(top)
                    if top == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return groups


def _cycle_in(group: list[str], graph: dict[str, list[Import]]) -> list[str]:
    """One cycle through the group's first module, as ``file:line importer -> imported`` steps."""
    members = set(group)
    start = group[0]
    # breadth-first search back to ``start`` inside the group
    paths = {start: []}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for imp in graph[node]:
                if imp.target not in members:
                    continue
                step = f"{MODULES[node].where}:{imp.line} {node} -> {imp.target}"
                if imp.target == start:
                    return paths[node] + [step]
                if imp.target not in paths:
                    paths[imp.target] = paths[node] + [step]
                    nxt_frontier.append(imp.target)
        frontier = nxt_frontier
    return [f"(cycle among {', '.join(group)})"]


def test_no_import_cycles():
    graph = _runtime_graph()
    cycles = [g for g in _strongly_connected(graph) if frozenset(g) not in KNOWN_CYCLES]
    report = ["cycle: " + "\n       ".join(_cycle_in(g, graph)) for g in cycles]
    assert not cycles, "import cycles between saesteer modules (module-level imports):\n" + "\n".join(report)


def test_no_private_names_across_modules():
    found = {name: _privates(mod.tree) for name, mod in MODULES.items()}
    elsewhere: dict[str, set[str]] = {}
    for name, (defined, _) in found.items():
        for p in defined:
            elsewhere.setdefault(p, set()).add(name)
    offenders = []
    for name, mod in MODULES.items():
        for imp in mod.imports:
            for n in imp.names:
                if _private(n) and (name, n) not in KNOWN_PRIVATE_USES:
                    offenders.append(f"{mod.where}:{imp.line} imports {imp.target}.{n}")
        defined, used = found[name]
        for attr, line in used:
            if attr in defined or attr not in elsewhere:
                continue  # this module's own private, or not saesteer's (torch._C, os._exit ...)
            if (name, attr) not in KNOWN_PRIVATE_USES:
                owners = ", ".join(sorted(elsewhere[attr]))
                offenders.append(f"{mod.where}:{line} uses .{attr} (defined in {owners})")
    assert not offenders, ("private names used across modules (make them public with a docstring, or move "
                           "the code):\n" + "\n".join(offenders))


def test_layers_point_one_way():
    offenders = []
    for name, mod in MODULES.items():
        mine = layer_of(name)
        for imp in mod.imports:
            theirs = layer_of(imp.target)
            if theirs > mine and (name, imp.target) not in KNOWN_UPWARD_IMPORTS:
                offenders.append(f"{mod.where}:{imp.line} {name} ({LAYERS[mine][0]}) imports {imp.target} "
                                 f"({LAYERS[theirs][0]})")
    assert not offenders, "imports that point up the layers (LAYERS, lowest first):\n" + "\n".join(offenders)


def needs_optional_dependency(module: str) -> set[str]:
    """The optional dependencies that importing ``module`` imports (through saesteer modules too)."""
    graph = _runtime_graph()
    seen, todo, found = {module}, [module], set()
    while todo:
        mod = MODULES[todo.pop()]
        found |= mod.third_party & OPTIONAL_DEPENDENCIES
        for imp in graph[mod.name]:
            if imp.target not in seen and imp.target in MODULES:
                seen.add(imp.target)
                todo.append(imp.target)
    return found


def test_saesteer_modules_are_imported_at_module_level():
    offenders = [f"{mod.where}:{imp.line} imports {imp.target} inside a function"
                 for name, mod in MODULES.items() for imp in mod.imports
                 if imp.in_function and (name, imp.target) not in ALLOWED_FUNCTION_IMPORTS
                 and (name, imp.target) not in KNOWN_FUNCTION_IMPORTS and not needs_optional_dependency(imp.target)]
    assert not offenders, ("saesteer modules imported inside functions (move them to the top of the module, "
                           "or add them to ALLOWED_FUNCTION_IMPORTS with the reason):\n" + "\n".join(offenders))


def test_the_checks_see_real_offenders():
    """The checkers themselves: a private import, a private attribute, an upward import and a cycle."""
    a = ast.parse("from saesteer.web.app import _x\nfrom saesteer.io import atomic_path\n")
    mod = Module("saesteer.errors", SRC / PACKAGE / "errors.py", 2, a)
    _collect_imports(mod, set(MODULES))
    assert [(i.target, i.names) for i in mod.imports] == [("saesteer.web.app", ("_x",)),
                                                          ("saesteer.io", ("atomic_path",))]
    assert layer_of("saesteer.web.app") > layer_of("saesteer.errors")
    graph = {"a": [Import("b", (), 1, False, False)], "b": [Import("c", (), 2, False, False)],
             "c": [Import("a", (), 3, False, False)], "d": [Import("a", (), 4, False, False)]}
    assert _strongly_connected(graph) == [["a", "b", "c"]]
    defined, used = _privates(ast.parse("def _a(x):\n    return x._b + self._c + _a\n"))
    assert defined == {"_a"} and used == [("_b", 2)]
    assert needs_optional_dependency("saesteer.web.app") >= {"fastapi"}
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n\n\nasync def h():\n    pass\n")
    assert functions_of(tree) == [("A.f", 2, 3), ("A.f.g", 3, 2), ("h", 7, 2)]
    assert not needs_optional_dependency("saesteer.sweep.runner")
    assert layer_of("saesteer.evaluation.text_metrics") < layer_of("saesteer.sweep.runner") < layer_of(
        "saesteer.evaluation.compare")
