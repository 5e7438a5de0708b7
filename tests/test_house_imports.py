"""The house plan's arrows (ARCHITECTURE.md "House rules"), read from the source with `ast`.

Every `import llamaforge...` in src/ is an edge from the importing module's room to the imported module's room;
an edge that ALLOWED does not list fails the test with the file, the line and the rule. Imports inside functions
count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "llamaforge"

EVERYTHING = "*"
BELOW_CLI = "* but the CLI"  # every room except the command-line layer (commands, cli, __main__)
CLI_LAYER = {"commands", "cli", "__main__"}

# room -> the rooms it imports besides itself: exactly the arrows in use (`test_every_listed_arrow_is_used`), so a
# new arrow is an edit here, a visible decision. A room is a top-level module or package of llamaforge; a dotted
# name (infer.templates) is one module of a room that another room may use without being allowed the whole room.
# NEUTRAL rooms are open to every room but the three below them (ARCHITECTURE.md: io "every room may use it";
# errors is the leaf whose UserError every room raises), so they are not repeated per room.
NEUTRAL = {"errors", "io"}
BELOW_NEUTRAL = {"errors", "io", "model"}  # the leaf; io imports errors only; model.py imports nothing
ALLOWED: dict[str, set[str] | str] = {
    "errors":    set(),                        # the leaf: UserError, which every room raises
    "io":        {"errors"},                   # neutral I/O: atomic writes, the JSONL and text readers; no torch
    "model":     set(),                        # the transformer, pure PyTorch
    "presets":   {"model"},                    # named ModelArgs
    "tokenizer": set(),
    "formats":   {"model", "tokenizer"},       # knows the model, not training
    "data":      {"tokenizer"},                # knows io and the tokenizer, not the model
    "plan":      {"model", "presets",          # the model's shapes
                  "train"},                     # sweep.py launches small training runs and fits their losses
    "train":     {"model", "presets", "tokenizer", "data", "formats",
                  "plan",                       # the one FLOP formula and device table (MFU)
                  "infer.templates"},           # finetune: chat formats as token sequences
    "infer":     {"model", "formats"},         # formats: the one tokenizer_config / chat-template reader
    "generate":  {"infer"},                    # the public generate(): a thin call into the engine
    "eval":      {"presets", "tokenizer", "formats", "infer"},
    "__init__":  {"formats", "tokenizer", "generate"},                              # the public API, lazily
    "run":       BELOW_CLI,                    # the flow calls every room in order, never the CLI layer above it
    "commands":  EVERYTHING,                   # one module per subcommand
    "cli":       EVERYTHING,
    "__main__":  EVERYTHING,
}

# rooms that must not import torch at all (not even lazily): `prepare` and the data workers stay free of it
NO_TORCH = {"errors", "io"}

# `from llamaforge import NAME` for the public API's lazy names: the room that implements NAME
PUBLIC_API = {"load_model": "formats", "save_model": "formats", "load_tokenizer": "tokenizer",
              "generate": "generate", "__version__": "__init__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    """'llamaforge.train.trainer' -> 'train'; 'llamaforge' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def project_imports(path: Path):
    """(line, imported llamaforge module) for every import of the project in `path`, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "llamaforge":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "llamaforge":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if is_module(sub):  # `from llamaforge.infer import templates`
                    yield node.lineno, sub
                elif node.module == "llamaforge" and alias.name in PUBLIC_API:
                    yield node.lineno, f"llamaforge.{PUBLIC_API[alias.name]}"
                else:
                    yield node.lineno, node.module


def third_party_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def allowed(source_room: str, target: str) -> bool:
    target_room = room_of(target)
    if target_room == source_room:
        return True
    rule = ALLOWED[source_room]
    if rule == EVERYTHING:
        return True
    if rule == BELOW_CLI:
        return target_room not in CLI_LAYER
    if target_room in NEUTRAL and source_room not in BELOW_NEUTRAL:
        return True
    dotted = target.split(".", 1)[1] if "." in target else "__init__"
    return target_room in rule or any(dotted == r or dotted.startswith(r + ".") for r in rule if "." in r)


def _rule_text(rule) -> str:
    return f"every room but {sorted(CLI_LAYER)}" if rule == BELOW_CLI else str(sorted(rule) or "nothing")


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path)
        source_room = room_of(source)
        if source_room not in ALLOWED:
            out.append(f"{path.relative_to(SRC)}: room {source_room!r} is not in the house plan's table (ALLOWED)")
            continue
        for line, target in project_imports(path):
            if not allowed(source_room, target):
                out.append(f"{path.relative_to(SRC)}:{line}: {source_room} -> {target}: not an arrow of the "
                           f"house plan ({source_room} may import {_rule_text(ALLOWED[source_room])})")
        if source_room in NO_TORCH and "torch" in third_party_roots(path):
            out.append(f"{path.relative_to(SRC)}: {source_room} imports torch")
    return out


def test_every_import_follows_the_house_plan():
    found = violations()
    assert not found, "imports against the house plan:\n" + "\n".join(found)


def arrows_in_use(root: Path = PACKAGE) -> dict[str, set[str]]:
    """room -> the ALLOWED entries its imports need (a room, or a dotted module where the table names one)."""
    used: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        source_room = room_of(module_name(path))
        rule = ALLOWED.get(source_room, set())
        rule = rule if isinstance(rule, set) else set()
        for _, target in project_imports(path):
            target_room = room_of(target)
            if target_room == source_room:
                continue
            dotted = target.split(".", 1)[1] if "." in target else "__init__"
            entry = next((r for r in rule if "." in r and (dotted == r or dotted.startswith(r + "."))), target_room)
            used.setdefault(source_room, set()).add(entry)
    return used


def test_every_listed_arrow_is_used():
    """A permissive table catches less: an arrow nobody uses is taken out (and put back when one is needed)."""
    used = arrows_in_use()
    unused = {room: sorted(rule - used.get(room, set())) for room, rule in ALLOWED.items() if isinstance(rule, set)}
    assert not any(unused.values()), f"arrows nobody uses: { {r: u for r, u in unused.items() if u} }"


def test_the_table_catches_a_wrong_arrow(tmp_path):
    """The checker itself: a planted edge (model -> train) and a planted torch in io are both reported."""
    assert not allowed("model", "llamaforge.train.trainer")
    assert not allowed("data", "llamaforge.model")
    assert not allowed("plan", "llamaforge.commands.args")
    assert not allowed("train", "llamaforge.infer.engine") and allowed("train", "llamaforge.infer.templates")
    assert allowed("commands", "llamaforge.train.trainer") and allowed("io", "llamaforge.errors")
    assert not allowed("infer", "llamaforge.generate")  # generate is a thin call into infer: one way only
    assert not allowed("eval", "llamaforge.data.mixture") and not allowed("formats", "llamaforge.presets")
    assert allowed("data", "llamaforge.io") and not allowed("model", "llamaforge.errors")  # model imports nothing
    assert not allowed("io", "llamaforge.tokenizer")
    assert allowed("run", "llamaforge.eval") and allowed("run", "llamaforge.train.trainer")
    assert not allowed("run", "llamaforge.commands.train") and not allowed("run", "llamaforge.cli")  # flow below CLI


def _imports_after(argv: list[str]) -> str:
    code = ("import sys\nfrom llamaforge.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(rc, 'TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["prepare", "--help"], ["prepare", "books", "SRC", "--out", "OUT"]])
def test_prepare_does_not_import_torch(tmp_path, argv):
    """`llamaforge prepare` runs on data machines without torch's import cost (and its threads in workers)."""
    src = tmp_path / "books"
    src.mkdir()
    (src / "a.txt").write_text("*** START OF THE PROJECT GUTENBERG EBOOK A ***\n" + "A line of a book.\n" * 50)
    argv = [str(src) if a == "SRC" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert _imports_after(argv) == "0 NO-TORCH"
    if argv[0] != "--help" and "--help" not in argv:
        assert (tmp_path / "out" / "stats.json").is_file()  # the run did its job
