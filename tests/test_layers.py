"""The layer rules of docs/architecture.md, checked on every module's imports (lazy ones included).

Why a test: a layering that is only written down erodes one convenient import at a
time.  Every rule here names the offending file and import, so a failure says what
to move, not just that something is wrong.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("crypto", "fedcredit", "coordinator", "party", "protos", "simulations")
#: The roof of the shared library: the CLI may reach every runtime (lazily, per sub-command).
ROOF = {"fedcredit/cli.py", "fedcredit/cli_models.py", "fedcredit/cli_jobs.py"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> list[pathlib.Path]:
    return sorted(f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py") if "_pb2" not in f.name)


MODULES = {_module_name(f): f for f in _files()}


def _imports(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                yield n.lineno, a.name
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                mod = ".".join([*base, *([n.module] if n.module else [])])
            else:
                mod = n.module or ""
            for a in n.names:  # `from pkg import submodule` imports the submodule
                sub = f"{mod}.{a.name}"
                yield n.lineno, sub if sub in MODULES else mod


def _rel(f: pathlib.Path) -> str:
    return f.relative_to(ROOT).as_posix()


def _violations(rule: str, files: list[pathlib.Path], banned: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    out: dict[str, None] = {}
    for f in files:
        for line, mod in _imports(f):
            if any(mod == b or mod.startswith(b + ".") for b in banned) and mod not in allowed:
                out[f"{_rel(f)}:{line} imports {mod} ({rule})"] = None
    return list(out)


def _under(*dirs: str) -> list[pathlib.Path]:
    return [f for f in _files() if any(_rel(f).startswith(d + "/") for d in dirs)]


def test_crypto_is_a_leaf() -> None:
    bad = _violations("crypto imports only fedcredit.errors from the project, never Flower", _under("crypto"),
                      ("fedcredit", "coordinator", "party", "simulations", "protos", "flwr"),
                      allowed=("fedcredit.errors",))
    assert not bad, "\n".join(bad)


def test_shared_library_never_imports_a_runtime() -> None:
    files = [f for f in _under("fedcredit") if _rel(f) not in ROOF]
    bad = _violations("the shared library sits below both runtimes", files, ("coordinator", "party", "simulations"))
    assert not bad, "\n".join(bad)


def test_protocols_stay_pure() -> None:
    # fedcredit.data is allowed: protocols take the Table type (loading one is the call check below)
    bad = _violations("protocol code never touches Flower, gRPC or the process/control-plane plumbing",
                      _under("fedcredit/protocols"),
                      ("flwr", "grpc", "protos", "fedcredit.control_plane", "fedcredit.processes", "fedcredit.dataplane",
                       "pandas", "pyarrow"))
    assert not bad, "\n".join(bad)


#: Calls that read a party's data table.  Protocol roles get their tables handed in (loaded once, by
#: ``fedcredit.data``, in the party runtime); they only read or write the files they are given.
_TABLE_READERS = {"read_csv", "read_parquet", "read_table", "ParquetFile", "load_table", "load_dataset"}


def test_protocols_open_no_file_they_were_not_handed() -> None:
    bad = []
    for f in _under("fedcredit/protocols"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Call):
                name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                if name in _TABLE_READERS:
                    bad.append(f"{_rel(f)}:{n.lineno} calls {name}() (protocol code loads no data table itself)")
    assert not bad, "\n".join(bad)


def test_runtimes_never_import_each_other() -> None:
    bad = _violations("party and coordinator share only what lives below them", _under("party"), ("coordinator",))
    bad += _violations("party and coordinator share only what lives below them", _under("coordinator"), ("party",))
    assert not bad, "\n".join(bad)


def test_nothing_deployed_imports_the_simulator() -> None:
    files = [f for f in _under("crypto", "fedcredit", "coordinator", "party", "protos") if _rel(f) not in ROOF]
    bad = _violations("deployed code never imports simulations", files, ("simulations",))
    bad += _violations("the simulator uses the library, not the CLI", _under("simulations"),
                       ("fedcredit.cli", "fedcredit.cli_models", "fedcredit.cli_jobs"))
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, f in MODULES.items():
        for _, imp in _imports(f):
            while imp and imp not in MODULES:  # `import a.b.c` where only a.b is ours
                imp = imp.rpartition(".")[0]
            if imp and imp != m:
                graph[m].add(imp)
    # Tarjan's strongly connected components; any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_layer_checker_sees_imports() -> None:
    """The checker itself: a lazy import inside a function is found (so the rules above can fail)."""
    found = dict((m, line) for line, m in _imports(ROOT / "fedcredit" / "cli.py"))
    assert "party.daemon" in found and "coordinator.daemon" in found
