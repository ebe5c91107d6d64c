"""The order that lets both xdist workers end together: costliest files first, each file's
tests together and in their own order, a file missing from the table first of all."""

from __future__ import annotations

from types import SimpleNamespace

from tests.file_costs import COSTS, load_costs, order_costliest_files_first


def items(*nodeids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_costliest_file_first_each_file_whole_and_in_order():
    collected = items("tests/a.py::x", "tests/a.py::y", "tests/b.py::x", "tests/c.py::x",
                      "tests/c.py::y[1]", "tests/c.py::y[2]")
    order_costliest_files_first(collected, {"tests/a.py": 1.0, "tests/b.py": 30.0,
                                            "tests/c.py": 5.0})
    assert [i.nodeid for i in collected] == [
        "tests/b.py::x", "tests/c.py::x", "tests/c.py::y[1]", "tests/c.py::y[2]",
        "tests/a.py::x", "tests/a.py::y"]


def test_files_of_equal_cost_stay_whole_in_collection_order():
    collected = items("tests/a.py::x", "tests/b.py::x", "tests/a.py::y", "tests/c.py::x")
    order_costliest_files_first(collected, {"tests/a.py": 2.0, "tests/b.py": 2.0,
                                            "tests/c.py": 9.0})
    assert [i.nodeid for i in collected] == [
        "tests/c.py::x", "tests/a.py::x", "tests/a.py::y", "tests/b.py::x"]


def test_a_file_not_in_the_table_goes_first():
    collected = items("tests/a.py::x", "tests/new.py::x")
    order_costliest_files_first(collected, {"tests/a.py": 100.0})
    assert [i.nodeid for i in collected] == ["tests/new.py::x", "tests/a.py::x"]


def test_the_table_names_existing_files():
    table = load_costs()
    root = COSTS.parents[1]
    assert table and all((root / name).is_file() for name in table), table
