#!/usr/bin/env python3
"""Print a Rust crate's module dependency graph; exit 1 when it has a cycle.

Usage: scripts/module-graph.py CRATE_SRC_DIR [--dot] [--inline]
       (or the crate root file itself, e.g. services/x/src/main.rs)

A module depends on another when its code names it in a path: `crate::a::b`,
`super::x`, `self::x`, a child module by name (`negotiation::negotiate`), and
every path of a `use` tree (`use crate::{a, b::C}`). A path names the deepest
module it goes through, so `use crate::Shared` (an item of the crate root)
makes the module depend on the crate root (`crate`). `mod x;` declarations
alone are not dependencies. Inline modules (`mod tests { .. }`) count as part
of the file that holds them, unless --inline is given.

The crate root is `lib.rs`, or `main.rs` when there is no `lib.rs`. Comments,
strings and char literals are ignored; a `#[path = ".."]` attribute is
followed for a `mod x;` at a file's top level. Python 3 standard library only.
"""

import argparse
import os
import re
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RAW_STRING = re.compile(r'(?:br|cr|r)(#*)"')


def strip(source):
    """The source with comments, strings and char literals blanked out."""
    out = []
    i = 0
    n = len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if source.startswith("/*", i):
            depth = 0
            while i < n:
                if source.startswith("/*", i):
                    depth += 1
                    i += 2
                elif source.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    i += 1
            out.append(" ")
            continue
        prev_ident = i > 0 and (source[i - 1].isalnum() or source[i - 1] == "_")
        raw = None if prev_ident else RAW_STRING.match(source, i)
        if raw:
            closing = '"' + raw.group(1)
            end = source.find(closing, raw.end())
            i = n if end < 0 else end + len(closing)
            out.append('""')
            continue
        if c == '"' or (c in "bc" and not prev_ident and source.startswith('"', i + 1)):
            i += 1 if c == '"' else 2
            while i < n and source[i] != '"':
                i += 2 if source[i] == "\\" else 1
            i += 1
            out.append('""')
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if source.startswith("\\", i + 1):
                end = source.find("'", i + 3)
                i = n if end < 0 else end + 1
                out.append("' '")
                continue
            if i + 2 < n and source[i + 2] == "'":
                i += 3
                out.append("' '")
                continue
        out.append(c)
        i += 1
    return "".join(out)


PATH_ATTRIBUTE = re.compile(
    r'#\[path\s*=\s*"([^"]+)"\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;'
)
TOKEN = re.compile(r"\$?[A-Za-z_][A-Za-z0-9_]*|::|[{}();,*<>#\[\]=!]|\S")


def tokenize(source):
    return TOKEN.findall(strip(source))


class Crate:
    def __init__(self, root_file):
        self.root_file = root_file
        # module path (tuple) -> the module path of the file that holds it
        self.file_of = {}
        # module path -> set of child module names
        self.children = {}
        # file module path -> (file name, tokens)
        self.files = {}
        self._load(root_file, (), True)

    def _load(self, path, modpath, owns_dir):
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        tokens = tokenize(source)
        explicit = {name: file for file, name in PATH_ATTRIBUTE.findall(source)}
        self.files[modpath] = (path, tokens)
        self.file_of[modpath] = modpath
        self.children.setdefault(modpath, set())
        directory = os.path.dirname(path)
        if not owns_dir:
            directory = os.path.join(directory, os.path.splitext(os.path.basename(path))[0])
        for scope, name, inline in declarations(tokens, modpath):
            child = scope + (name,)
            self.children.setdefault(scope, set()).add(name)
            if inline:
                self.file_of[child] = modpath
                self.children.setdefault(child, set())
                continue
            base = os.path.join(directory, *scope[len(modpath):])
            if name in explicit and scope == modpath:
                self._load(os.path.join(os.path.dirname(path), explicit[name]), child, False)
                continue
            for candidate, owns in (
                (os.path.join(base, name + ".rs"), False),
                (os.path.join(base, name, "mod.rs"), True),
            ):
                if os.path.isfile(candidate):
                    self._load(candidate, child, owns)
                    break
            else:
                print(f"warning: no file for module {name!r} declared in {path}", file=sys.stderr)

    def is_module(self, modpath):
        return modpath in self.file_of


def declarations(tokens, modpath):
    """(scope, name, inline) for every `mod name;` and `mod name { .. }`."""
    scopes = [(modpath, -1)]
    depth = 0
    found = []
    for index, token in enumerate(tokens):
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if len(scopes) > 1 and scopes[-1][1] == depth:
                scopes.pop()
        elif token == "mod" and index + 2 < len(tokens) and IDENT.fullmatch(tokens[index + 1]):
            after = tokens[index + 2]
            if after in ";{":
                name = tokens[index + 1]
                found.append((scopes[-1][0], name, after == "{"))
                if after == "{":
                    scopes.append((scopes[-1][0] + (name,), depth))
    return found


def use_paths(tokens, start):
    """Expand the use tree starting at tokens[start]; returns (paths, end index)."""
    paths = []

    def tree(i, prefix):
        segments = list(prefix)
        while i < len(tokens):
            token = tokens[i]
            if token == "{":
                i += 1
                while i < len(tokens) and tokens[i] != "}":
                    i = tree(i, segments)
                    if i < len(tokens) and tokens[i] == ",":
                        i += 1
                return i + 1
            if token == "*":
                paths.append(segments + ["*"])
                return i + 1
            if token == "::":
                i += 1
                continue
            if token in (",", "}", ";"):
                if len(segments) > len(prefix):
                    paths.append(segments)
                return i
            if token == "as":
                i += 2
                continue
            if token.lstrip("$") and IDENT.fullmatch(token.lstrip("$")):
                segments.append(token.lstrip("$"))
                i += 1
                continue
            i += 1
        return i

    end = tree(start, [])
    while end < len(tokens) and tokens[end] != ";":
        end += 1
    return paths, end


def references(crate, modpath, tokens):
    """Every path that names a module of the crate, as (scope, segments)."""
    scopes = [(modpath, -1)]
    depth = 0
    found = []
    i = 0
    previous = None
    while i < len(tokens):
        token = tokens[i]
        scope = scopes[-1][0]
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if len(scopes) > 1 and scopes[-1][1] == depth:
                scopes.pop()
        elif token == "mod" and i + 2 < len(tokens) and tokens[i + 2] == "{":
            scopes.append((scope + (tokens[i + 1],), depth))
            depth += 1
            i += 3
            previous = "{"
            continue
        elif token == "use":
            paths, end = use_paths(tokens, i + 1)
            for path in paths:
                found.append((scope, path))
            i = end + 1
            previous = ";"
            continue
        elif previous != "::" and i + 1 < len(tokens) and tokens[i + 1] == "::":
            name = token.lstrip("$")
            if name in ("crate", "super", "self") or name in crate.children.get(scope, ()):
                segments = [name]
                j = i + 1
                while j + 1 < len(tokens) and tokens[j] == "::" and IDENT.fullmatch(tokens[j + 1]):
                    segments.append(tokens[j + 1])
                    j += 2
                found.append((scope, segments))
                previous = segments[-1]
                i = j
                continue
        previous = token
        i += 1
    return found


def resolve(crate, scope, segments):
    """The deepest module a path goes through, or None when it is not the crate's."""
    head, rest = segments[0], segments[1:]
    if head == "crate":
        current = ()
    elif head == "self":
        current = scope
    elif head == "super":
        current = scope[:-1]
        while rest and rest[0] == "super":
            current = current[:-1]
            rest = rest[1:]
    elif head in crate.children.get(scope, ()):
        current = scope + (head,)
    else:
        return None
    for segment in rest:
        if segment == "self":
            continue
        if crate.is_module(current + (segment,)):
            current = current + (segment,)
        else:
            break
    return current


def name(modpath):
    return "::".join(modpath) if modpath else "crate"


def graph(crate, inline):
    node = (lambda path: path) if inline else (lambda path: crate.file_of[path])
    nodes = set(node(path) for path in crate.file_of)
    edges = {path: set() for path in nodes}
    for modpath, (_, tokens) in crate.files.items():
        for scope, segments in references(crate, modpath, tokens):
            target = resolve(crate, scope, segments)
            if target is None or not crate.is_module(target):
                continue
            source, target = node(scope), node(target)
            if source != target:
                edges[source].add(target)
    return edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index = {}
    low = {}
    stack = []
    on_stack = set()
    components = []
    counter = [0]

    def visit(start):
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            vertex, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter[0]
                    counter[0] += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(edges[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[vertex] = min(low[vertex], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[vertex])
            if low[vertex] == index[vertex]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == vertex:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for vertex in sorted(edges):
        if vertex not in index:
            visit(vertex)
    return components


def shortest_cycle(edges, component, start):
    """One shortest cycle through `start` inside the component."""
    members = set(component)
    previous = {start: None}
    queue = [start]
    while queue:
        vertex = queue.pop(0)
        for successor in sorted(edges[vertex]):
            if successor not in members:
                continue
            if successor == start:
                path = [vertex]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if successor not in previous:
                previous[successor] = vertex
                queue.append(successor)
    return component


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the crate's src directory, or its root file")
    parser.add_argument("--dot", action="store_true", help="print Graphviz dot instead of text")
    parser.add_argument("--inline", action="store_true", help="inline modules are nodes of their own")
    args = parser.parse_args()
    root = args.src
    if os.path.isdir(root):
        for candidate in ("lib.rs", "main.rs"):
            if os.path.isfile(os.path.join(root, candidate)):
                root = os.path.join(root, candidate)
                break
        else:
            parser.error(f"{args.src} holds neither lib.rs nor main.rs")
    crate = Crate(root)
    edges = graph(crate, args.inline)
    components = cycles(edges)
    if args.dot:
        print("digraph modules {")
        for source in sorted(edges):
            print(f'  "{name(source)}";')
            for target in sorted(edges[source]):
                print(f'  "{name(source)}" -> "{name(target)}";')
        print("}")
    else:
        print(f"module graph of {root} (a -> b: a uses b)")
        for source in sorted(edges):
            targets = ", ".join(name(target) for target in sorted(edges[source]))
            print(f"  {name(source)} -> {targets}" if targets else f"  {name(source)}")
    if components:
        print(f"{len(components)} group(s) of modules importing each other in a circle:", file=sys.stderr if args.dot else sys.stdout)
        out = sys.stderr if args.dot else sys.stdout
        for component in components:
            members = ", ".join(name(module) for module in component)
            print(f"  modules that reach each other: {members}", file=out)
            seen = set()
            for start in component:
                cycle = shortest_cycle(edges, component, start)
                smallest = min(range(len(cycle) - 1), key=lambda at: name(cycle[at]))
                key = tuple(cycle[smallest:-1] + cycle[:smallest])
                if key in seen:
                    continue
                seen.add(key)
                print("    cycle: " + " -> ".join(name(module) for module in key + (key[0],)), file=out)
        return 1
    if not args.dot:
        print("no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
