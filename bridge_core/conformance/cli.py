"""`bridge-core conform [ARCH ... | SPEC.yaml | --all] [--variant NAME] [--json] [--model PATH] [-q]`.

Registered by the core CLI through `register(subparsers)`. Prints a check × model matrix, one column
per tiny test model of each spec (`spec[variant]`), with progress on stderr while it runs, or JSON to
stdout; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from .report import CheckResult, Report


def register(sub: Any) -> None:
    conform = sub.add_parser(
        "conform",
        help="run the conformance checks on specs (tiny offline models, or --model PATH)",
        description="Hold specs to HF's own computation: one row per check, one column per architecture.",
    )
    conform.add_argument("specs", nargs="*", metavar="ARCH|SPEC.yaml", help="registered names or spec files")
    conform.add_argument("--all", action="store_true", help="every registered spec")
    conform.add_argument("--model", metavar="PATH", help="a saved checkpoint to check instead of a tiny random model")
    conform.add_argument("--check", action="append", dest="checks", metavar="NAME", help="only these checks")
    conform.add_argument(
        "--variant",
        action="append",
        dest="variants",
        metavar="NAME",
        help="only these test models of each spec ('base' is test_config itself; default: base, every declared "
        "variant and an eager load)",
    )
    conform.add_argument("--seed", type=int, default=0, help="seed of the tiny models and the random inputs")
    conform.add_argument("--json", action="store_true", help="print the reports as JSON to stdout")
    conform.add_argument("-q", "--quiet", action="store_true", help="no progress or matrix: failures and a summary")
    conform.add_argument(
        "--mutate",
        action="store_true",
        help="mutation testing: run deliberately wrong copies of each spec (swapped paths, flipped kinds, dropped "
        "fields, perturbed operands, forced branches) and report the check that kills each, or that it survived",
    )
    conform.add_argument(
        "--min-kill-rate",
        type=float,
        default=0.95,
        metavar="RATE",
        help="with --mutate: exit 1 when a spec's kill rate is below RATE (default 0.95)",
    )
    conform.add_argument(
        "--model-type",
        action="append",
        dest="model_types",
        metavar="TYPE",
        help="an HF model_type: a tiny model from its config class, checked with its registered spec or, when "
        "none matches, a spec drafted by observing it (bridge_core.drafting)",
    )
    conform.add_argument(
        "--all-model-types",
        action="store_true",
        help="every model type of transformers' causal-LM and seq2seq-LM mappings (slow: see scripts/coverage.py)",
    )
    conform.set_defaults(func=cmd_conform, usage_error=conform.error)


def _targets(args: argparse.Namespace) -> list[str | None]:
    from .runner import all_names

    if args.all and args.model:
        args.usage_error("--all and --model cannot be combined (a checkpoint has one spec)")
    if args.all:
        return [*all_names(), *args.specs]
    if args.specs:
        return list(args.specs)
    if args.model:
        return [None]  # the spec is found from the checkpoint's config
    args.usage_error("name an architecture or a spec file, or give --all or --model")


def _loads(target: str | None, args: argparse.Namespace) -> list[str | None]:
    """The test models to run for one target: every variant of the spec, or the ones `--variant` names."""
    from .runner import variant_names

    if args.model:
        return [None]
    found = variant_names(target)
    if not args.variants:
        return found
    wanted = [None if v == "base" else v for v in args.variants]
    missing = [v for v in wanted if v not in found]
    if missing:
        args.usage_error(
            f"{target} has no variant {', '.join(map(str, missing))} (it has: base, "
            f"{', '.join(str(v) for v in found if v)})"
        )
    return [v for v in found if v in wanted]


def summary(reports: list[Report], n_checks: int) -> str:
    """`10 spec(s), 27 test models, 29 checks each: 700 passed, 83 skipped, 0 failed`: skips are counted."""
    counts = {status: sum(r.status == status for rep in reports for r in rep.results) for status in _STYLE}
    specs = len({rep.spec_file for rep in reports})
    return (
        f"{specs} spec(s), {len(reports)} test model(s), {n_checks} checks each: "
        f"{counts['pass']} passed, {counts['skip']} skipped, {counts['fail']} failed"
    )


def cmd_conform(args: argparse.Namespace) -> int:
    from ..bridge.loading import require_checkpoint
    from .catalogue import catalogue
    from .runner import run

    if args.model_types or args.all_model_types:
        return cmd_model_types(args)
    targets = _targets(args)
    if args.mutate:
        return cmd_mutate([t for t in targets if t is not None], args)
    if args.model:
        args.model = str(require_checkpoint(args.model))  # one line for a path that does not exist
    checks = catalogue(args.checks)
    err = Console(stderr=True, highlight=False)
    reports: list[Report] = []
    show_progress = not (args.json or args.quiet)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err, disable=not show_progress
    ) as progress:
        for target in targets:
            for variant in _loads(target, args):
                name = f"{target or args.model}" + (f"[{variant}]" if variant else "")
                label = escape(f"conform {name}")
                task = progress.add_task(label, total=len(checks))

                def advance(result: CheckResult, task=task, label=label) -> None:
                    progress.update(task, advance=1, description=f"{label}: {escape(result.name)}")

                report = run(target, args.model, checks=args.checks, seed=args.seed, progress=advance, variant=variant)
                reports.append(report)
    ok = all(r.ok for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "reports": [r.to_dict() for r in reports]}, indent=2))
        return 0 if ok else 1
    out = Console(highlight=False)
    if not args.quiet:
        table = matrix(reports)
        # a terminal narrower than the table would have rich cut check names and figures to '…':
        # print at the table's own width and let the terminal wrap the lines instead
        needed = out.measure(table, options=out.options.update_width(10_000)).maximum
        (out if needed <= out.width else Console(highlight=False, width=needed)).print(table)
    for report in reports:
        for result in report.failed():
            out.print(f"[bold red]FAIL[/] {escape(f'{report.architecture} · {result.explain()}')}", soft_wrap=True)
    out.print(f"[{'green' if ok else 'bold red'}]{escape(summary(reports, len(checks)))}[/]")
    return 0 if ok else 1


_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def matrix(reports: list[Report]) -> Table:
    """Checks as rows, architectures as columns; each cell the status and the measured figure, whose
    meaning (a max abs diff, a count of hook points, ...) the `figure` column names per check."""
    table = Table(
        title="bridge-core conformance",
        caption="each cell: ok / FAIL / skip, and the number the 'figure' column names",
        show_lines=False,
    )
    names = list(dict.fromkeys(r.name for report in reports for r in report.results))
    table.add_column("check", no_wrap=True)
    table.add_column("family", style="dim")
    table.add_column("figure", style="dim")
    for report in reports:
        table.add_column(escape(report.architecture), justify="right", no_wrap=True)
    for name in names:
        first = next(r for report in reports for r in report.results if r.name == name)
        cells = []
        for report in reports:
            found = [r for r in report.results if r.name == name]
            cells.append(f"[{_STYLE[found[0].status]}]{escape(found[0].short())}[/]" if found else "")
        table.add_row(escape(name), escape(first.family), escape(first.figure_label), *cells)
    return table


def cmd_mutate(targets: list[str], args: argparse.Namespace) -> int:
    """`conform --mutate`: one line per mutant (killed by which check, or SURVIVED) and a kill rate per
    spec; exit 1 when a spec's kill rate is below `--min-kill-rate`. A survivor is either a gap in the
    checks or an equivalent mutant (a mistake that changes nothing this model computes)."""
    from .mutation import MutantResult, mutate

    err = Console(stderr=True, highlight=False)

    def show(result: MutantResult) -> None:
        if not (args.json or args.quiet) or not result.killed:
            verdict = f"killed by {result.killed_by}" if result.killed else "SURVIVED"
            err.print(escape(f"{verdict:>40}  {result.mutant.name}"), soft_wrap=True)

    reports = [mutate(target, progress=show) for target in targets]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    for report in reports:
        killed = len(report.results) - len(report.survivors)
        err.print(escape(f"{report.spec}: {killed}/{len(report.results)} mutants killed ({report.kill_rate:.0%})"))
    return 0 if all(r.kill_rate >= args.min_kill_rate for r in reports) else 1


def cmd_model_types(args: argparse.Namespace) -> int:
    """`conform --model-type T` / `--all-model-types`: one outcome per type (builtin, passing, failing with
    its checks or drafting step, out_of_scope with the reason); exit 1 when an in-scope type fails."""
    from ..drafting.build import mapping_names
    from ..drafting.reach import conform_model_type

    if args.specs or args.all or args.model or args.mutate:
        args.usage_error("--model-type / --all-model-types take no spec, --all, --model or --mutate")
    types = list(args.model_types or [])
    if args.all_model_types:
        causal, seq2seq = mapping_names()
        types += [t for t in [*causal, *seq2seq] if t not in types]
    outcomes = []
    err = Console(stderr=True, highlight=False)
    for model_type in types:
        outcome = conform_model_type(model_type, checks=args.checks)
        outcomes.append(outcome)
        if not args.json:
            line = f"{model_type}: {outcome.status}"
            if outcome.spec:
                line += f" (spec {outcome.spec})"
            if outcome.failing:
                line += f"; failing checks: {', '.join(outcome.failing)}"
            if outcome.detail:
                line += f"; {outcome.detail}"
            for gap in outcome.gaps:
                line += f"\n    missing vocabulary: {gap}"
            (err if args.quiet else Console(highlight=False)).print(escape(line), soft_wrap=True)
    ok = all(o.status != "failing" and not o.failing for o in outcomes)
    if args.json:
        print(json.dumps({"ok": ok, "model_types": [o.to_dict() for o in outcomes]}, indent=2))
    return 0 if ok else 1
