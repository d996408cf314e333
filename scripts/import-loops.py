#!/usr/bin/env python3
"""Fails when files of one crate import each other in a loop (docs/architecture.md).

A file's imports are its `crate::<module>` and `super::` paths outside comments and
`#[cfg(test)]` code, and a `mod.rs`/`lib.rs` file's `use <child>::...` of its own
children. Each crate's files form a graph; any cycle is printed and the exit code is 1.
"""
import os
import re
import sys


def modules(src):
    found = {}
    for dirpath, _, files in os.walk(src):
        if "bin" in dirpath.split(os.sep):
            continue
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            module = os.path.relpath(path, src)[:-3].replace(os.sep, "::")
            if module.endswith("::mod"):
                module = module[: -len("::mod")]
            if module in ("lib", "main"):
                module = ""
            with open(path, encoding="utf-8") as f:
                text = f.read().split("#[cfg(test)]")[0]
            found[module] = re.sub(r"//[^\n]*", "", text)
    return found


def edges(mods):
    out = set()
    for module, text in mods.items():
        for ref in re.findall(r"crate::([a-z_]+(?:::[a-z_]+)*)", text):
            parts = ref.split("::")
            for k in range(len(parts), 0, -1):
                target = "::".join(parts[:k])
                if target in mods:
                    if target != module:
                        out.add((module, target))
                    break
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        for ref in re.findall(r"\bsuper::([a-z_]+)", text):
            sibling = f"{parent}::{ref}" if parent else ref
            target = sibling if sibling in mods else parent
            if target in mods and target != module:
                out.add((module, target))
        if re.search(r"\bsuper::\{", text) and parent in mods and parent != module:
            out.add((module, parent))
        for child in re.findall(r"^\s*(?:pub(?:\([a-z]+\))? )?use ([a-z_]+)::", text, re.M):
            target = f"{module}::{child}" if module else child
            if target in mods and re.search(rf"\bmod {child};", text):
                out.add((module, target))
    return out


def cycles(graph):
    found = set()

    def walk(node, path):
        for nxt in graph.get(node, ()):
            if nxt in path:
                loop = path[path.index(nxt):]
                i = loop.index(min(loop))
                found.add(tuple(loop[i:] + loop[:i]))
            else:
                walk(nxt, path + [nxt])

    for node in graph:
        walk(node, [node])
    return found


def main():
    failed = False
    for root in ("crates", "services"):
        for crate in sorted(os.listdir(root)):
            src = os.path.join(root, crate, "src")
            if not os.path.isdir(src):
                continue
            graph = {}
            for a, b in edges(modules(src)):
                graph.setdefault(a, set()).add(b)
            for loop in sorted(cycles(graph)):
                names = [m or "lib" for m in loop]
                print(f"{root}/{crate}: import loop {' -> '.join(names + [names[0]])}")
                failed = True
    if failed:
        sys.exit(1)
    print("no import loops between files")


if __name__ == "__main__":
    main()
