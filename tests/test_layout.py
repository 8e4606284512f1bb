"""Protects the layout the README's Code map describes: scripts on top, helpers in the wigglegpt
package, arrows one way. Every import statement of every file (module level and inside functions)
is read with ast: the package never imports a script (model_bio excepted), no script imports
another, model_bio.py imports only torch and the standard library, there is no circle of imports
between the project's modules, and every file on top is a script with a main() or model_bio.py."""

import ast
import os
import sys

from conftest import ROOT

PACKAGE = "wigglegpt"


def project_modules():
    """{module name: path} of the top-level .py files and the package's modules."""
    found = {name[:-3]: os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith(".py")}
    folder = os.path.join(ROOT, PACKAGE)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            module = PACKAGE if name == "__init__.py" else f"{PACKAGE}.{name[:-3]}"
            found[module] = os.path.join(folder, name)
    return found


def imported(path, known):
    """The project modules a file imports, anywhere in it, and the other top-level names it imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    ours, others = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in known and name != PACKAGE:
                ours.add(name)
            elif name.split(".")[0] not in known:
                others.add(name.split(".")[0])
    return ours, others


def graph():
    known = project_modules()
    return known, {module: imported(path, known) for module, path in known.items()}


def test_the_package_never_imports_a_script_and_no_script_imports_another():
    known, edges = graph()
    scripts = {m for m in known if "." not in m and m not in (PACKAGE, "model_bio")}
    for module, (ours, _) in edges.items():
        wrong = sorted(ours & scripts)
        assert not wrong, f"{module} imports the script(s) {wrong}"


def test_model_bio_imports_only_torch_and_the_standard_library():
    _, edges = graph()
    ours, others = edges["model_bio"]
    assert not ours, ours
    assert others <= {"torch"} | set(sys.stdlib_module_names), others


def test_no_circle_of_imports():
    _, edges = graph()
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges[module][0]):
            assert state.get(target) != "open", " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_every_file_on_top_is_a_script():
    known, _ = graph()
    for module, path in known.items():
        if "." in module or module in (PACKAGE, "model_bio"):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        guarded = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
        assert "main" in functions and guarded, f"{module}.py has no main() run under __name__ == '__main__'"
