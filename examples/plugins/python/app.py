"""An example idem plugin in Python: keep a manifest of a directory, one line per file with
its size. It is the Rust example (examples/plugins/rust) line for line, and writes the same
bytes, which shows that idem's WIT is the contract and the language is the author's choice.

componentize-py generates the `wit_world` package from ../../../wit (world `plugin`); this
module provides the one export, `step.run`. Host errors arrive as `Err(error)` exceptions,
and a step fails by raising `Err(StepError(...))`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import fs, log
from wit_world.imports.report import Counter, StepError, StepReport


def join(a: str, b: str) -> str:
    """`a/b`, where an empty side (or `.`) stands for "here"."""
    a = a.rstrip("/")
    if a in ("", "."):
        return b
    if b == "":
        return a
    return f"{a}/{b}"


def render(directory: str, items: list[tuple[str, int]]) -> str:
    """A header with the totals, then `SIZE<TAB>PATH` per file, sorted by path."""
    items.sort()
    total = sum(size for _, size in items)
    lines = [f"# manifest of {directory}: {len(items)} files, {total} bytes\n"]
    lines += [f"{size}\t{path}\n" for path, size in items]
    return "".join(lines)


def describe(e: Err) -> str:
    """A host error in words, e.g. `denied: "../x" climbs above the root`."""
    err = e.value
    kind = type(err).__name__.removeprefix("Error_")
    value = getattr(err.value, "message", err.value)
    return f"{kind.lower()}: {value}"


def fail(context: str, e: Err) -> Err:
    return Err(StepError(message=f"{context}: {describe(e)}", cause=e.value))


def collect(directory: str, sub: str, recursive: bool, output: str, out: list) -> None:
    here = join(directory, sub)
    try:
        entries = fs.list_dir(here)
    except Err as e:
        raise fail(f"listing {here}", e)
    for entry in entries:
        rel = join(sub, entry.name)
        kind = entry.metadata.kind
        if kind == fs.Kind.FILE and join(directory, rel) != output:
            out.append((rel, entry.metadata.size))
        elif kind == fs.Kind.DIRECTORY and recursive:
            collect(directory, rel, recursive, output, out)


class Step(exports.Step):
    def run(self, config: str) -> StepReport:
        cfg = json.loads(config)
        if not isinstance(cfg, dict) or "dir" not in cfg:
            raise Err(StepError(message='this plugin needs a config, e.g. {"dir": "dist"}', cause=None))
        unknown = set(cfg) - {"dir", "output", "recursive"}
        if unknown:
            raise Err(StepError(message=f"config: unknown field(s) {sorted(unknown)}", cause=None))
        directory = cfg["dir"]
        output = cfg.get("output") or join(directory, "MANIFEST")
        items: list[tuple[str, int]] = []
        collect(directory, "", cfg.get("recursive", True), output, items)
        text = render(directory, items)
        if "/" in output:
            parent = output.rsplit("/", 1)[0]
            try:
                fs.create_dir(parent, None)
            except Err as e:
                raise fail(f"creating {parent}", e)
        try:
            change = fs.write_atomic(output, text.encode(), None)
        except Err as e:
            raise fail(f"writing {output}", e)
        what = {
            fs.Change.UNCHANGED: "up to date",
            fs.Change.CREATED: "created",
            fs.Change.UPDATED: "updated",
            fs.Change.REMOVED: "removed",
        }[change]
        log.log(log.Level.DEBUG, f"manifest {output}: {what}")
        return StepReport(
            counters=[
                Counter(name="files", value=len(items)),
                Counter(name="bytes", value=sum(size for _, size in items)),
            ],
            failures=[],
            message=f"{output} {what}",
        )
