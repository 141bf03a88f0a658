"""The `bridge-core` command: hook tables, spec listing, validation, schema (and `conform`).

Every command that prints a table also takes `--json` (to stdout). Runs offline: without
`--model`, the model is a tiny random one built from the spec's `test_config`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import BridgeCoreError

if TYPE_CHECKING:  # rich (about 45 ms) is imported by the commands that print, never for `--help`
    from rich.console import Console


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def print_error(exc: BaseException) -> None:
    """`error: <message>` on stderr, the message printed as written (never read as rich markup, so
    `[in, out]` survives), whatever the width of the terminal."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text("error: ", style="bold red") + Text(str(exc)))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bridge-core")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


def _bridge(args: argparse.Namespace):
    from .inspection import build_bridge

    return build_bridge(args.arch, args.model, args.seed)


def add_model_source(parser: argparse.ArgumentParser) -> None:
    """`ARCH`, `--model PATH` and `--tiny`, as `hooks` and `inspect` take them."""
    parser.add_argument(
        "arch",
        nargs="?",
        help="a registered spec name or a spec YAML file; optional with --model (found from the checkpoint's config)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random model built from the spec's test_config (the default; refused with --model)",
    )
    source.add_argument("--model", metavar="PATH", help="a saved checkpoint (local path or hub id) instead")


def hook_table(bridge, batch: int = 2, seq: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Every hook point with the shape it shows and how often it fired on one forward (random tokens)."""
    from .inspection import make_inputs, run_and_count

    inputs = make_inputs(bridge, seq=seq, seed=seed)
    inputs.tokens = inputs.tokens.expand(batch, -1)
    if inputs.decoder_input_ids is not None:
        inputs.decoder_input_ids = inputs.decoder_input_ids.expand(batch, -1)
    return run_and_count(bridge, inputs)[2]


def cmd_hooks(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    bridge = _bridge(args)
    rows = hook_table(bridge, batch=args.batch, seq=args.seq, seed=args.seed)
    if args.json:
        print(json.dumps({"architecture": bridge.cfg.architecture, "hooks": rows}, indent=2))
        return 0
    table = Table(title=escape(f"{bridge!r} — input [batch {args.batch}, seq {args.seq}]"))
    table.add_column("hook name")
    table.add_column("shape")
    table.add_column("fires", justify="right")
    for row in rows:
        style = None if row["fires"] == 1 else "bold red"
        table.add_row(escape(row["name"]), str(tuple(row["shape"] or ())), str(row["fires"]), style=style)
    _console().print(table)
    dead = [r["name"] for r in rows if r["fires"] != 1]
    if dead:
        _console().print(f"[bold red]{len(dead)} hook(s) did not fire exactly once[/]")
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .plugin_host import PluginWarning, is_builtin
    from .registry import default_registry

    registry = default_registry()
    plugins = [name for name, _ in registry.plugins.pm.list_name_plugin()]
    with warnings.catch_warnings():  # claim conflicts are listed below, as their plugins' failures
        warnings.simplefilter("ignore", PluginWarning)
        if not all(map(is_builtin, plugins)):  # a third-party kind that clashes or misfits is its failure
            registry.plugins.kinds  # noqa: B018  (built-in kinds are only named here: no transformers)
        registry.claims()
    rows = []
    for name in registry.names():
        entry = registry.entry(name)
        spec = registry.usable(name)  # a plugin's spec that does not validate is listed as its failure
        if spec is None:
            continue
        rows.append(
            {
                "name": name,
                "origin": entry.origin,
                "file": entry.raw.file,
                "architectures": spec.match.architectures,
                "model_type": spec.match.model_type,
            }
        )
    failures = [f.__dict__ for f in registry.plugins.failures]
    if args.json:
        print(json.dumps({"specs": rows, "plugins": plugins, "failed_plugins": failures}, indent=2))
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Registered architecture specs")
    for column in ("name", "origin", "HF classes", "model types"):
        table.add_column(column)
    for row in rows:
        cells = (row["name"], row["origin"], ", ".join(row["architectures"]), ", ".join(row["model_type"]))
        table.add_row(*map(escape, cells))
    console = _console()
    console.print(table)
    console.print(escape(f"plugins: {', '.join(plugins)}"))
    for failure in failures:
        text = escape(f"{failure['distribution']}:{failure['name']}: {failure['error']}")
        console.print(f"[bold red]failed plugin[/] {text}", soft_wrap=True)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .bridge import Bridge, loading
    from .registry import default_registry
    from .validation import spec_problems

    registry = default_registry()
    spec, file = loading.spec_from(args.spec, registry)  # schema errors: file, line, field
    model = loading.random_model(spec)
    problems = spec_problems(spec, model, registry.plugins.kinds, file)
    if problems:
        console = _console()
        head = escape(f"{len(problems)} problem(s) binding {file} to a tiny {spec.hf_class}:")
        console.print(f"[bold red]{head}[/]", soft_wrap=True)
        for problem in problems:
            console.print(f"  {escape(str(problem))}", soft_wrap=True)
        return 1
    bridge = Bridge(model, spec, registry=registry, spec_file=file)
    text = escape(f"{args.spec}: binds to a tiny {type(bridge.model).__name__}, {bridge!r}")
    _console().print(f"[green]ok[/] {text}", soft_wrap=True)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .spec.schema import Spec

    print(json.dumps(Spec.model_json_schema(by_alias=True), indent=2))
    return 0


def cmd_scaffold(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .bridge.loading import require_checkpoint
    from .scaffold import draft_text

    path = require_checkpoint(args.model) if args.model else None
    text = draft_text(model_type=args.model_type, path=path)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        _console().print(escape(f"wrote {args.output}"))
    else:
        print(text)
    return 0


class _VersionAction(argparse.Action):
    """`--version`: the installed version, read (importlib.metadata, about 25 ms) only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show program's version number and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge-core", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hooks = sub.add_parser("hooks", help="table of hook points: name, shape, how often each fired")
    add_model_source(hooks)
    hooks.add_argument("--batch", type=int, default=2, help="batch size of the random input (default 2)")
    hooks.add_argument("--seq", type=int, default=8, help="sequence length of the random input (default 8)")
    hooks.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights and of the random input")
    hooks.add_argument("--json", action="store_true", help="print JSON to stdout")
    hooks.set_defaults(func=cmd_hooks)

    listing = sub.add_parser("list", help="registered specs with their origin, and plugins that failed")
    listing.add_argument("--json", action="store_true", help="print JSON to stdout")
    listing.set_defaults(func=cmd_list)

    validate = sub.add_parser("validate", help="check a spec file and bind it to a tiny model")
    validate.add_argument("spec", help="a spec YAML file (or a registered spec name)")
    validate.set_defaults(func=cmd_validate)

    scaffold = sub.add_parser("scaffold", help="write a draft spec from a model's structure")
    source = scaffold.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-type", help="an HF model_type (a tiny model of its default config is observed)")
    source.add_argument("--model", help="a checkpoint directory or hub id (a tiny twin of its config; no weights)")
    scaffold.add_argument("-o", "--output", help="write the draft here instead of stdout")
    scaffold.set_defaults(func=cmd_scaffold)

    schema = sub.add_parser("schema", help="print the JSON Schema of spec files")
    schema.set_defaults(func=cmd_schema)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def _register_conform(sub: Any) -> None:
    # Declared here as a pass-through: importing bridge_core.conformance imports torch and the checks,
    # which `bridge-core --help` must not pay for. The real parser is built when `conform` runs.
    conform = sub.add_parser(
        "conform",
        help="run the conformance checks on specs (tiny offline models, or --model PATH)",
        add_help=False,
        prefix_chars="\0",  # every argument, `--help` included, goes to the real parser
    )
    conform.add_argument("rest", nargs=argparse.REMAINDER, help="the arguments of `bridge-core conform --help`")
    conform.set_defaults(func=_cmd_conform)


def _cmd_conform(args: argparse.Namespace) -> int:
    from .conformance.cli import register

    parser = argparse.ArgumentParser(prog="bridge-core")
    register(parser.add_subparsers(dest="command", required=True))
    real = parser.parse_args(["conform", *args.rest])
    return real.func(real)


def _register_inspect(sub: Any) -> None:
    from .inspection import register

    register(sub)


_EXTRA_COMMANDS: list[Callable[[Any], None]] = [_register_inspect, _register_conform]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BridgeCoreError as exc:
        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
