"""One way to declare an asset: its code version read off its source, its upstreams said once.

`source_version(fn)` hashes an asset function's source together with the source of every object
it names from its own module (config classes, helpers) and of every kuai_assets module outside
defs/ that it reaches through those names (the plain logic it calls). Editing any of them gives a
new version, so the UI marks the asset unsynced; nothing is typed by hand.

`table_asset` declares an asset that writes one Parquet table: it opens a DuckDB connection on
exactly its declared upstream tables (and nothing else), hands the function a temporary path that
is published atomically when the function returns, turns the platform's errors into a Dagster
Failure naming the asset, attaches the table's metadata (row count, schema, preview), and
declares the upstreams as its deps.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import time
import types
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from kuai_assets.defs.metadata import clear_failures, table_metadata

PACKAGE = "kuai_assets"
WIRING = "kuai_assets.defs"


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _logic_modules(module: types.ModuleType, names: set[str], seen: set[str]) -> list[types.ModuleType]:
    """kuai_assets modules outside defs/ that `names` (looked up in `module`) come from."""
    found = []
    for name in sorted(names):
        value = vars(module).get(name)
        if value is None:
            continue
        source = value if isinstance(value, types.ModuleType) else inspect.getmodule(value)
        if source is None or source.__name__ in seen:
            continue
        if source.__name__.startswith(PACKAGE + ".") and not source.__name__.startswith(WIRING):
            seen.add(source.__name__)
            found.append(source)
    return found


def source_version(fn: Callable[..., Any]) -> str:
    """A short hash of `fn`'s source and of the sources it depends on (see the module docstring)."""
    fn = inspect.unwrap(fn)
    module = inspect.getmodule(fn)
    texts = [inspect.getsource(fn)]
    names = _names(fn.__code__) | {
        getattr(a, "__name__", "") for a in fn.__annotations__.values() if not isinstance(a, str)
    } | {a for a in fn.__annotations__.values() if isinstance(a, str)}
    # objects of the asset's own module that it names (config classes, helpers): their source too,
    # in the order of their names (the walk's order follows set order, which varies per process)
    local: set[str] = set()
    pending = sorted(names)
    while pending:
        name = pending.pop()
        value = vars(module).get(name)
        if name in local or value is None or inspect.getmodule(value) is not module:
            continue
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        local.add(name)
        if inspect.isfunction(value):
            pending.extend(sorted(_names(value.__code__) - local))
        else:
            pending.extend(base.__name__ for base in value.__mro__[1:])
    texts += [inspect.getsource(vars(module)[name]) for name in sorted(local)]
    seen: set[str] = set()
    for name in sorted(local):
        value = vars(module)[name]
        if inspect.isfunction(value):
            names |= _names(value.__code__)
        elif inspect.isclass(value):
            names |= {base.__name__ for base in value.__mro__[1:]}
    for logic in _logic_modules(module, names, seen):
        texts.append(inspect.getsource(logic))
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def module_source(module: types.ModuleType | str) -> str:
    """A module's whole source; a dotted name is read from its file without importing the module
    (only its parent packages), for logic whose imports are heavy."""
    if isinstance(module, str):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise TypeError(f"no module named {module!r}")
        return Path(spec.origin).read_text()
    return inspect.getsource(module)


def modules_version(*modules: types.ModuleType | str) -> str:
    """A short hash of whole modules' sources (for a step whose logic spans several modules)."""
    return hashlib.sha256("\n".join(module_source(m) for m in modules).encode()).hexdigest()[:12]


def versioned_asset(
    *, logic: tuple[types.ModuleType | str, ...] = (), **kwargs
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.asset` with the code version derived from the function's source, and from the whole
    `logic` modules (module objects, or dotted names read without importing them) where the logic
    it runs spans more modules than its names reach."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        version = source_version(fn)
        if logic:
            version = hashlib.sha256((version + modules_version(*logic)).encode()).hexdigest()[:12]
        return dg.asset(code_version=version, **kwargs)(fn)

    return decorate


def table_asset(
    *,
    group_name: str,
    upstream: tuple[str, ...] = (),
    reads: tuple[str, ...] = (),
    kinds: set[str] = frozenset({"duckdb"}),
    description: str | None = None,
    **kwargs,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """Declare a table asset. The function is called as `fn(context, con, out, **resources)`.

    `con` sees exactly `upstream` (one view per table); `out` is where the table is written.
    `reads` names upstream assets that are not tables (the `dataset` folder), read by other means. The
    function returns a dict of extra metadata (or None); the table is published when it returns.
    Its parameters after `out` are Dagster resources and must include `workspace`.
    """

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        name = fn.__name__
        signature = inspect.signature(fn)
        resources = list(signature.parameters)[3:]
        if "workspace" not in resources:
            raise TypeError(f"{name}: a table asset takes the `workspace` resource")

        @functools.wraps(fn)
        def body(context: dg.AssetExecutionContext, **given) -> dg.MaterializeResult:
            work = given["workspace"].work()
            started = time.time()
            with clear_failures(name, work.root):
                con = work.connect(upstream)
                try:
                    with work.writing_table(name) as out:
                        extra = fn(context, con, out, **given) or {}
                finally:
                    con.close()
            seconds = dg.MetadataValue.float(round(time.time() - started, 2))
            return dg.MaterializeResult(metadata={**table_metadata(work.table_path(name)), "seconds": seconds, **extra})

        # Dagster reads resources off the signature: (context, <resources>)
        body.__signature__ = signature.replace(
            parameters=[signature.parameters["context"], *(signature.parameters[r] for r in resources)],
            return_annotation=dg.MaterializeResult,
        )
        body.__annotations__ = {
            **{k: v for k, v in fn.__annotations__.items() if k in ("context", *resources)},
            "return": dg.MaterializeResult,
        }
        return dg.asset(
            name=name,
            group_name=group_name,
            kinds=set(kinds),
            deps=[dg.AssetKey(t) for t in (*reads, *upstream)],
            description=description or inspect.getdoc(fn),
            code_version=source_version(fn),
            **kwargs,
        )(body)

    return decorate
