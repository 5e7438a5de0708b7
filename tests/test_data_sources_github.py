"""GitHub source: license allowlist, header removal, heuristics and exact dedup, on real Python stdlib files."""

from __future__ import annotations

import gzip
import json
import shutil
import textwrap
from pathlib import Path

import pytest
from data_helpers import run_source

from llamaforge.data.sources.github import clean_file, detect_license, remove_header

MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy..."
GPL = "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n"
STDLIB = Path(textwrap.__file__).parent


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    mit, gpl, mit2 = root / "a_mit", root / "b_gpl", root / "c_mit"
    for repo, lic in ((mit, MIT), (gpl, GPL), (mit2, MIT)):
        (repo / "pkg").mkdir(parents=True)
        (repo / "LICENSE").write_text(lic)
    for name in ("textwrap.py", "shlex.py", "fnmatch.py"):
        shutil.copy(STDLIB / name, mit / "pkg" / name)
    shutil.copy(STDLIB / "shlex.py", gpl / "pkg" / "shlex.py")
    shutil.copy(STDLIB / "textwrap.py", mit2 / "pkg" / "textwrap_copy.py")  # exact duplicate of a_mit's
    shutil.copy(STDLIB / "colorsys.py", mit2 / "pkg" / "colorsys.py")
    (mit2 / "pkg" / "notes.txt").write_text("plain notes, not in the extension allowlist\n" * 5)
    (mit2 / "pkg" / "bundle.min.js").write_text("var a=" + "1+" * 800 + "1;\n")  # one 1600-char line
    (mit2 / "pkg" / "blob.c").write_text("/*\n * Copyright (c) 2020 Someone\n */\n" + "int x;\n" + "@@@@ ;;;; ))))\n" * 20)
    return root


def test_github_rules_on_repositories(repos: Path, tmp_path: Path):
    stats, docs = run_source("github", sorted(repos.iterdir()), tmp_path / "out")
    paths = {(d["meta"]["repo_name"], d["meta"]["path"]) for d in docs}
    assert ("a_mit", "pkg/textwrap.py") in paths and ("a_mit", "pkg/shlex.py") in paths
    assert ("c_mit", "pkg/colorsys.py") in paths
    assert not any(repo == "b_gpl" for repo, _ in paths), "GPL repository must be dropped"
    assert ("c_mit", "pkg/textwrap_copy.py") not in paths, "exact duplicate: only the first copy is kept"
    st = stats["stages"]
    assert st["read"]["drops"]["license"] == 2  # LICENSE + shlex.py of the GPL repo
    assert st["exact_dedup"]["drops"]["duplicate"] == 1
    drops = st["code_filters"]["drops"]
    assert drops["extension"] >= 1 and drops["max_line_length"] == 1 and drops["alphanumeric_fraction"] == 1
    assert all(d["meta"]["license"] == "mit" for d in docs)


def test_header_removal_and_clean_file():
    c_src = "/* Copyright 2001 ACME. All rights reserved. */\n#include <stdio.h>\nint main(void) { return 0; }\n"
    assert remove_header(c_src).startswith("#include")
    not_license = "/* helper for parsing */\nint f(void);\n"
    assert remove_header(not_license) == not_license  # a block comment without "copyright" stays
    py_src = "# Copyright 2020 X\n# SPDX-License-Identifier: MIT\n\nimport os\nprint(os.sep)\n"
    assert remove_header(py_src) == "import os\nprint(os.sep)\n"

    text, reason = clean_file(STDLIB / "textwrap.py")
    assert reason is None and "def wrap(" in text
    assert clean_file("x = 1\n" * 3, "setup.cfg") == (None, "extension")
    assert clean_file(Path("LICENSE"), "LICENSE") == (None, "skipped_path")


def test_detect_license(tmp_path: Path):
    (tmp_path / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    assert detect_license(tmp_path) == "apache-2.0"
    (tmp_path / "LICENSE").write_text(GPL)
    assert detect_license(tmp_path) == "other"


def test_github_jsonl_export_with_license_field(tmp_path: Path):
    export = tmp_path / "export"
    export.mkdir()
    code = (STDLIB / "colorsys.py").read_text()
    rows = [{"content": code, "path": "a/colorsys.py", "repo_name": "x/a", "license": "mit"},
            {"content": code, "path": "b/colorsys.py", "repo_name": "x/b", "license": "apache-2.0"},  # duplicate
            {"content": code.replace("rgb", "RGB"), "path": "c/colorsys.py", "repo_name": "x/c", "license": "gpl-3.0"},
            {"content": "int main() { return 0; }\n" * 3, "path": "d/m.c", "repo_name": "x/d", "license": "bsd-3-clause"}]
    with gzip.open(export / "part-000.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    stats, docs = run_source("github", [export], tmp_path / "out")
    assert [d["meta"]["repo_name"] for d in docs] == ["x/a", "x/d"]
    assert stats["stages"]["read"]["drops"] == {"license": 1}
    assert stats["stages"]["exact_dedup"]["drops"] == {"duplicate": 1}


def test_folder_of_repositories_each_with_its_own_license(repos: Path, tmp_path: Path):
    """`prepare github DIR` with one folder per repository (or per owner/repo) = every repository given one by one."""
    _, one_by_one = run_source("github", sorted(repos.iterdir()), tmp_path / "each")
    stats, whole = run_source("github", [repos], tmp_path / "whole")
    assert whole == one_by_one and len(whole) >= 4
    assert stats["stages"]["read"]["drops"]["license"] == 2  # only the GPL repository's files
    owners = tmp_path / "owners"
    shutil.copytree(repos, owners / "someone")  # GitHub's owner/repo layout
    _, nested = run_source("github", [owners], tmp_path / "nested")
    assert [d["meta"]["path"] for d in nested] == [d["meta"]["path"] for d in one_by_one]


def test_a_folder_without_a_license_file_is_told_apart_from_a_license_not_kept(repos: Path, tmp_path: Path):
    """`prepare github SUBFOLDER` (no LICENSE at its root) dropped every file as `license`, the reason a GPL
    repository's files get: the stage table now says `no_license_file`, the user's hint to give the repository."""
    stats, docs = run_source("github", [repos / "a_mit" / "pkg"], tmp_path / "sub")
    assert docs == [] and stats["stages"]["read"]["drops"] == {"no_license_file": 3}
    stats, _ = run_source("github", [repos / "b_gpl"], tmp_path / "gpl")
    assert stats["stages"]["read"]["drops"] == {"license": 2}
