"""Where an actor's class or a task's function is imported from in its process, and what to bind for it."""

from __future__ import annotations

import os
import sys


def import_paths(module_name: str) -> tuple[list[str], list[str]]:
    """Where module ``module_name`` is imported from in an actor, and the files to expose for it.

    Returns (sys.path roots, paths to bind read-only): the module's own package
    directory (or the module file itself when it is top-level) plus the
    ``__init__.py`` of each enclosing package, and nothing else of the project.
    Nothing for ``__main__`` or a module without a file: what it defines travels by value.
    """
    module = sys.modules.get(module_name)
    f = getattr(module, "__file__", None)
    if module is None or not f or module_name == "__main__":
        return [], []
    path = os.path.abspath(f)
    is_pkg = os.path.basename(path) == "__init__.py"
    depth = module_name.count(".") + (1 if is_pkg else 0)
    root = os.path.dirname(path)
    for _ in range(depth):
        root = os.path.dirname(root)
    if depth == 0:
        return [root], [path]
    own = os.path.dirname(path)
    binds = [own]
    d = os.path.dirname(own)
    while len(d) > len(root):
        init = os.path.join(d, "__init__.py")
        if os.path.exists(init):
            binds.append(init)
        d = os.path.dirname(d)
    return [root], binds
