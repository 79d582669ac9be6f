"""No import cycle among the modules of `ferclean/` and `flows/`, counting imports inside functions."""

from __future__ import annotations

from ferclean.code_graph import cycles, import_graph, imports_of, module_files


def test_the_checker_sees_imports_inside_functions_and_finds_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import x\n    return x\n")
    (pkg / "c.py").write_text("import os\n\ndef g():\n    from . import a\n")
    g = import_graph(tmp_path, ("pkg",))
    assert g["pkg.b"] == {"pkg.c"} and g["pkg.c"] == {"pkg.a"}
    assert cycles(g) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_real_graph_has_function_level_edges():
    # a sanity check that the graph below is not empty or blind to lazy imports
    mods = module_files()
    assert "ferclean.views" in imports_of("ferclean.catalog", mods["ferclean.catalog"], mods)
    assert "ferclean.train.stage" in imports_of("ferclean.score_shards", mods["ferclean.score_shards"], mods)  # inside a function


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in found)
