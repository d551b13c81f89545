"""The error tree drawn in watchtower/errors.py is the tree of the classes.

Every WatchtowerError subclass lives in watchtower.errors (importing every
module of the package finds any defined elsewhere), and the drawing names
each one once, under its real parent.
"""

from __future__ import annotations

import importlib
import re

from tests.support.checkout import package_modules
from watchtower import errors


def drawn_tree() -> dict[str, str]:
    """Class name -> parent name, read off the module docstring's drawing."""
    text = errors.__doc__ or ""
    drawing = text.split("::", 1)[1]
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in drawing.splitlines():
        found = re.match(r"^(\s*(?:[|+ -]*?\+-- )?)([A-Z]\w+)", line)
        if not found:
            if line.strip() and stack:
                break  # the prose after the drawing
            continue
        depth, name = len(found.group(1)), found.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | all_subclasses(sub)
    return found


def test_every_watchtower_error_is_in_the_errors_module_and_drawn_under_its_parent() -> None:
    for name in package_modules():
        if not name.endswith("__main__"):
            importlib.import_module(name)
    classes = {cls for cls in all_subclasses(errors.WatchtowerError) if cls.__module__.startswith("watchtower")}
    assert {cls.__module__ for cls in classes} == {"watchtower.errors"}
    actual = {cls.__name__: cls.__bases__[0].__name__ for cls in classes}
    assert drawn_tree() == actual


def test_the_drawing_reader_sees_nesting() -> None:
    tree = drawn_tree()
    assert tree["DatabaseURLError"] == "ConfigError"
    assert tree["ConfigError"] == "WatchtowerError"
    assert tree["JobConflict"] == "JobError"
