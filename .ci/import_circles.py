#!/usr/bin/env python3
"""Import circles in the workspace's crates: two modules (or two top-level folders) that each
use the other. Edges are the `crate::a::b` and `super::x` paths a module's code names (doc
comments and test modules left out); a module using its own submodules by relative path is
its parent's business, not a circle. Prints every circle and exits 1 if there is one.

    .ci/import_circles.py [CRATE_SRC ...]    (default: every workspace crate's src/)
"""

import os
import re
import sys


def modules(src):
    """Module path (a tuple of names) -> file, for every .rs file under `src`."""
    mods = {}
    for folder, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            mods[tuple(parts)] = path
    return mods


def code_of(path):
    """The file's code: no test module, no comments."""
    text = open(path, encoding="utf-8").read()
    cut = text.find("#[cfg(test)]\nmod tests")
    if cut >= 0:
        text = text[:cut]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def resolve(mods, path):
    """The module a path names: its longest prefix that is a module."""
    path = tuple(path)
    while path and path not in mods:
        path = path[:-1]
    return path if path in mods else None


def edges(src):
    mods = modules(src)
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        if os.path.basename(path) == "main.rs":
            continue
        code = code_of(path)
        named = []
        for group in re.finditer(r"\b(crate|super)((?:::\w+)*)::\{([^}]*)\}", code):
            base = [group.group(1)] + [p for p in group.group(2).split("::") if p]
            for item in group.group(3).split(","):
                item = item.strip().split(" as ")[0]
                if item:
                    named.append(base + item.split("::"))
        for one in re.finditer(r"\b(crate|super)((?:::\w+)+)", code):
            named.append([one.group(1)] + [p for p in one.group(2).split("::") if p])
        for parts in named:
            if parts[0] == "crate":
                target = parts[1:]
            else:
                base, i = list(module), 0
                while i < len(parts) and parts[i] == "super":
                    base, i = base[:-1], i + 1
                target = base + parts[i:]
            found = resolve(mods, target)
            # The crate root re-exports; naming it is not a circle.
            if found not in (None, (), module):
                graph[module].add(found)
    return graph


def circles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def folders(graph):
    """The same graph between top-level modules (folders), inner edges left out."""
    top = {}
    for module, targets in graph.items():
        if not module:
            continue
        top.setdefault(module[0], set()).update(
            t[0] for t in targets if t and t[0] != module[0]
        )
    for targets in list(top.values()):
        for t in targets:
            top.setdefault(t, set())
    return {(k,): {(t,) for t in v} for k, v in top.items()}


def main():
    crates = sys.argv[1:] or [
        "shard-tool/src", "loader/src", "cpu-kernels/src", "trainer/src"
    ]
    crates = [c for c in crates if os.path.isdir(c)]
    found = 0
    for src in crates:
        graph = edges(src)
        for level, g in (("module", graph), ("folder", folders(graph))):
            for component in circles(g):
                found += 1
                names = ["::".join(m) for m in component]
                print(f"{src}: {level} circle: {' <-> '.join(names)}")
                for m in component:
                    uses = sorted("::".join(t) for t in g[m] if t in component)
                    print(f"    {'::'.join(m)} uses {', '.join(uses)}")
    print(f"import circles: {found} in {', '.join(crates)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
