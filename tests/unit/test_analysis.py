"""Static analysis of a cell: reads, assigns, line numbers (lepton_lab/remote/_analysis.py)."""

from __future__ import annotations

import textwrap

import pytest

from lepton_lab.remote._analysis import analyze, cell_filename, is_builtin, last_expression


def cell(src: str) -> str:
    return textwrap.dedent(src).lstrip("\n")


def test_plain_reads_and_assigns():
    an = analyze("y = x * 2\n")
    assert an.reads == {"x"}
    assert an.assigns == ("y",)


def test_names_read_before_assigned_are_reads():
    an = analyze(cell("""
        total = total + step
        step = 3
    """))
    assert {"total", "step"} <= an.reads
    assert set(an.assigns) == {"total", "step"}


def test_function_bodies_read_module_names_not_their_locals():
    an = analyze(cell("""
        def train(model, lr=base_lr):
            opt = make_opt(model.parameters(), lr)
            for batch in loader:
                loss = model(batch)
            return loss
    """))
    assert {"base_lr", "make_opt", "loader"} <= an.reads
    assert not {"model", "lr", "opt", "batch", "loss"} & an.reads
    assert an.assigns == ("train",)


def test_nested_functions_and_closures():
    an = analyze(cell("""
        def outer():
            local = 1
            def inner():
                return local + glob
            return inner()
    """))
    assert "glob" in an.reads
    assert "local" not in an.reads


def test_comprehensions_read_the_iterable_and_free_names_only():
    an = analyze("ys = [i * k for i in data if i > threshold]\n"
                 "d = {key: v for key, v in pairs}\n")
    assert {"data", "k", "threshold", "pairs"} <= an.reads
    assert not {"i", "key", "v"} & an.reads
    assert set(an.assigns) == {"ys", "d"}


def test_lambda_and_class_bodies():
    an = analyze(cell("""
        f = lambda a: a + offset
        class Net(Base):
            width = default_width
            def forward(self, x):
                return self.act(x) * scale
    """))
    assert {"offset", "Base", "default_width", "scale"} <= an.reads
    assert not {"a", "x", "self", "width"} & an.reads
    assert set(an.assigns) == {"f", "Net"}


def test_imports_are_assigned_not_read():
    an = analyze(cell("""
        import os.path
        import numpy as np
        from collections import OrderedDict as OD
    """))
    assert set(an.assigns) == {"os", "np", "OD"}
    assert an.reads == frozenset()


def test_other_binding_forms_are_assigned():
    an = analyze(cell("""
        for idx in range(3):
            pass
        with ctx() as handle:
            pass
        if (n := compute()) > 0:
            pass
        a, (b, *c) = triple
    """))
    assert {"idx", "handle", "n", "a", "b", "c"} <= set(an.assigns)
    assert {"ctx", "compute", "triple"} <= an.reads


def test_attribute_and_subscript_augassign_read_the_object():
    an = analyze("obj.count += 1\nbuf[0] += 1\n")
    assert {"obj", "buf"} <= an.reads


def test_augmented_assignment_reads_the_name():
    an = analyze("step += 1\n")
    assert "step" in an.reads
    assert an.assigns == ("step",)


def test_global_statement_in_a_function_assigns_the_name():
    an = analyze(cell("""
        def bump():
            global counter
            counter = 5
        bump()
    """))
    assert "counter" in an.assigns


def test_ipython_names_are_never_shipped():
    an = analyze("print(In, Out, _, __, _i3, _ih, get_ipython)\n_ = 1\n")
    assert not {"In", "Out", "_", "__", "_i3", "_ih", "get_ipython"} & an.reads
    assert "_" not in an.assigns


def test_builtins_are_read_but_recognised_as_builtins():
    # analysis reports every free name; the shipping step drops builtins with is_builtin()
    an = analyze("print(len(items), sorted(range(3)))\n")
    shipped = {name for name in an.reads if not is_builtin(name)}
    assert shipped == {"items"}
    assert is_builtin("len") and is_builtin("print") and not is_builtin("items")


# -- line numbers ---------------------------------------------------------------------------
def test_source_is_offset_by_the_magic_line():
    an = analyze("a = 1\nb = 2\n")
    assert an.source == "\na = 1\nb = 2\n"
    assert an.source.splitlines()[2] == "b = 2"       # cell line 3 == body line 2
    assert analyze("a = 1\n", line_offset=0).source == "a = 1\n"


@pytest.mark.parametrize("body, cell_line", [
    ("x = (\n", 2),
    ("a = 1\nb = 2\nif True\n    pass\n", 4),
    ("ok = 1\n  bad_indent = 2\n", 3),
])
def test_syntax_error_is_raised_locally_with_the_cell_line(body, cell_line):
    with pytest.raises(SyntaxError) as info:
        analyze(body)
    # line 1 of the notebook cell is the %%lepton line, so body line N is cell line N + 1
    assert info.value.lineno == cell_line


def test_filename_and_hash_are_stable_and_content_based():
    a1, a2, b = analyze("x = 1\n"), analyze("x = 1\n"), analyze("x = 2\n")
    assert a1.filename == a2.filename == cell_filename(a1.source)
    assert a1.filename != b.filename
    assert a1.filename.startswith("<lepton-cell-")
    assert a1.source_hash == a2.source_hash != b.source_hash
    assert len(a1.source_hash) == 64


@pytest.mark.parametrize("src, expected", [
    ("x = 1\nx\n", True), ("f()\n", True), ("x = 1\n", False), ("", False),
    ("for i in r:\n    i\n", False), ("x = (\n", False),
])
def test_last_expression(src, expected):
    assert last_expression(src) is expected
