"""`import gradest` and `gradest --help` stay light: scipy and matplotlib load only where they are used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = {"scipy", "matplotlib", "sklearn", "mlxtend"}

LOADED = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"


def top_level_modules(code: str) -> set[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\n{LOADED}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_gradest_loads_neither_scipy_nor_matplotlib():
    loaded = top_level_modules("import gradest")
    assert "gradest" in loaded and "torch" in loaded
    assert not loaded & (HEAVY | {"rich", "typer"}), sorted(loaded & (HEAVY | {"rich", "typer"}))


def test_help_loads_neither_scipy_nor_matplotlib():
    code = ("import contextlib, io\nfrom gradest.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['--help']) == 0\n"
            "    for command in ('compare', 'sweep', 'advise', 'blr', 'gaussian', 'vae'):\n"
            "        assert main([command, '--help']) == 0")
    loaded = top_level_modules(code)
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_lazy_public_names_still_resolve():
    code = ("import gradest\nfrom gradest import Selection, select, exact_grad, ExactGradient\n"
            "from gradest.lab.selection import Selection as S, select as s\n"
            "from gradest.exact import ExactGradient as E, exact_grad as e\n"
            "assert (Selection, select, ExactGradient, exact_grad) == (S, s, E, e)\n"
            "assert {'select', 'Selection', 'exact_grad'} <= set(dir(gradest))\n"
            "import gradest.gaussian as g, gradest.gaussian.walkthrough as w\n"
            "assert g.Settings is w.Settings and g.run is w.run")
    assert "scipy" in top_level_modules(code)  # now they are used, they are loaded


def _import_graph() -> dict[str, set[str]]:
    """Module -> the gradest modules it imports (runtime imports; type-only ones left out)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src"
    modules = {}
    for path in (root / "gradest").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            # a package's own modules import it on the way in: that edge is not a dependency
            edges[module] |= {n for n in names if n in modules and n != module and n != "gradest"
                              and not module.startswith(n + ".")}
    return edges


def test_no_import_circles():
    edges, state, cycle = _import_graph(), {}, []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = "open"
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycle.extend([*path[path.index(n):], n])
                return True
            if n not in state and visit(n, [*path, n]):
                return True
        state[m] = "done"
        return False

    for m in sorted(edges):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " → ".join(cycle)
