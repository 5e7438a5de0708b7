"""Every third-party import in src/ is declared in pyproject.toml (core dependencies or a named extra), with a
version range: a fresh `pip install llamaforge[...]` gets what the code imports, in versions it was tested with."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "llamaforge"

# import name -> the distributions that provide it, where the names differ (PEP 503-normalized below)
IMPORT_TO_DIST = {
    "sklearn": {"scikit-learn"},
    "yaml": {"pyyaml"},
    "PIL": {"pillow"},
    "lm_eval": {"lm-eval"},
    "fasttext": {"fasttext", "fasttext-predict", "fasttext-numpy2", "fasttext-wheel"},
    "llama_cpp": {"llama-cpp-python"},
    "google": {"protobuf"},
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """Normalized distribution name -> its requirement string, over core dependencies and every extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out = {}
    for req in reqs:
        name = normalize(re.match(r"[A-Za-z0-9._-]+", req).group(0))
        if name != "llamaforge":  # an extra that includes others
            out[name] = req
    return out


def third_party_imports() -> dict[str, list[str]]:
    """Top-level import name -> 'file:line' places, for every import in src/ outside the standard library."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root != "llamaforge" and root not in sys.stdlib_module_names and root != "__future__":
                    found.setdefault(root, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def undeclared(imports: dict[str, list[str]], deps: dict[str, str]) -> list[str]:
    out = []
    for name, places in sorted(imports.items()):
        dists = IMPORT_TO_DIST.get(name, {name})
        if not any(normalize(d) in deps for d in dists):
            out.append(f"{name} (imported at {places[0]}): no {' / '.join(sorted(dists))} in pyproject.toml")
    return out


def test_every_third_party_import_is_declared():
    missing = undeclared(third_party_imports(), declared())
    assert not missing, "imported but not declared:\n" + "\n".join(missing)


def test_every_dependency_has_a_version_range():
    open_ended = [req for req in declared().values() if not (">=" in req and "<" in req.replace("<=", "<"))]
    assert not open_ended, f"declare a range (>=low,<high): {open_ended}"


def test_the_check_catches_an_undeclared_import():
    """The checker itself: scipy without a scipy requirement is reported, sklearn maps to scikit-learn."""
    deps = {"scikit-learn": "scikit-learn>=1.3,<2"}
    assert undeclared({"scipy": ["x.py:1"], "sklearn": ["y.py:2"]}, deps) == [
        "scipy (imported at x.py:1): no scipy in pyproject.toml"]
