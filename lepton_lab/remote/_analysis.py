"""Static analysis of a cell: which names it reads from the kernel and which it assigns.

Uses :mod:`symtable`, so reads inside functions, lambdas and comprehensions that refer to
module-level names count, and names local to those scopes do not.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import symtable
from dataclasses import dataclass

#: IPython's own namespace entries, never shipped.
_IPY_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_ih", "_oh", "_dh",
              "_ii", "_iii", "_i"}


@dataclass(frozen=True)
class CellAnalysis:
    source: str          # what is compiled remotely (line numbers match the notebook cell)
    filename: str
    reads: frozenset[str]
    assigns: tuple[str, ...]
    source_hash: str


def cell_filename(source: str) -> str:
    return f"<lepton-cell-{hashlib.sha1(source.encode()).hexdigest()[:10]}>"


@functools.lru_cache(maxsize=128)  # the magic checks syntax first; run_cell reuses the result
def analyze(body: str, *, line_offset: int = 1) -> CellAnalysis:
    """Parse the cell; a SyntaxError is raised here, locally, before anything is sent.

    ``line_offset`` blank lines are prepended so that line numbers in tracebacks match the
    notebook cell, whose first line is the ``%%lepton`` line.
    """
    source = "\n" * line_offset + body
    filename = cell_filename(source)
    compile(source, filename, "exec", dont_inherit=True)  # raises SyntaxError with cell lines
    table = symtable.symtable(source, filename, "exec")
    reads: set[str] = set()
    assigns: list[str] = []
    for sym in table.get_symbols():
        name = sym.get_name()
        if sym.is_referenced():
            reads.add(name)
        if sym.is_assigned() or sym.is_imported() or sym.is_namespace():
            assigns.append(name)
    nested_assigns: set[str] = set()
    _collect_nested_globals(table, reads, nested_assigns)
    assigns.extend(nested_assigns)  # `global x; x = ...` in a function sets a kernel name
    # `x += 1` reads x before writing it (symtable reports only the assignment)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            reads.add(node.target.id)
    reads -= _IPY_NAMES
    reads = {n for n in reads if not (n.startswith("_i") and n[2:].isdigit())}
    assigns_sorted = tuple(sorted(set(assigns) - _IPY_NAMES))
    digest = hashlib.sha256(body.rstrip().encode()).hexdigest()  # stable across trailing blanks
    return CellAnalysis(source, filename, frozenset(reads), assigns_sorted, digest)


def _collect_nested_globals(table: symtable.SymbolTable, reads: set[str],
                            assigns: set[str]) -> None:
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_global() or (sym.is_free() and child.get_type() == "class"):
                reads.add(sym.get_name())
                if sym.is_declared_global() and sym.is_assigned():
                    assigns.add(sym.get_name())
        _collect_nested_globals(child, reads, assigns)


def is_builtin(name: str) -> bool:
    return hasattr(builtins, name)


def last_expression(source: str) -> bool:
    """True if the cell ends with an expression whose value a notebook would display."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
