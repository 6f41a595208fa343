"""`freeatm`: the user's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml
from rich.console import Console

from freeatm.api import manifests
from freeatm.api.crd import all_crds

console = Console()
err = Console(stderr=True)


def report(problems: list[manifests.Problem]) -> None:
    """One line per problem on stderr: severity, file, resource, field path, what to do."""
    for p in problems:
        style = "red" if p.severity == "error" else "yellow"
        err.print(
            f"[{style}]{p.severity}[/]: {p.file}: {p.document}: [bold]{p.path}[/]: {p.message}",
            highlight=False,
            soft_wrap=True,
        )


def dump_yaml(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def existing_file(value: str) -> Path:
    """argparse type of -f: a usage error (exit 2) unless the path is an existing file."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"file {value!r} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"file {value!r} is a directory")
    return path


def crds(args: argparse.Namespace) -> int:
    generated = all_crds()
    if args.out is None:
        sys.stdout.write("---\n".join(dump_yaml(c) for c in generated.values()))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, crd in generated.items():
        (args.out / name).write_text(dump_yaml(crd))
        err.print(f"wrote {args.out / name}")
    return 0


def validate(args: argparse.Namespace) -> int:
    result = manifests.load(args.files)
    report(result.problems)
    if result.errors:
        return 1
    console.print(f"[green]ok[/]: {len(result.resources)} resource(s) valid", highlight=False)
    return 0


def render(args: argparse.Namespace) -> int:
    from freeatm.operator.config import OperatorConfig
    from freeatm.operator.workload import planned_outputs
    from freeatm.operator.workload import render as render_workload

    result = manifests.load(args.files)
    report(result.errors)
    if result.errors:
        return 1
    config = OperatorConfig.from_env(runtime_image=args.image)
    outputs = planned_outputs(result.resources)
    objects = [obj for r in result.resources for obj in render_workload(r, outputs, config)]
    sys.stdout.write("---\n".join(dump_yaml(o) for o in objects))
    return 0


def operator(args: argparse.Namespace) -> int:
    from freeatm.operator.main import run_operator

    run_operator(
        args.namespace,
        args.metrics_port,
        args.liveness_port,
        runtime_image=args.image,
        service_account=args.service_account,
        log_level=args.log_level,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from .local_run import EXIT_FAILED, results_table, run_pipeline
    from .report import write_report

    result = manifests.load(args.files)
    # Without a cluster, a reference to a resource outside these files cannot be satisfied.
    missing = [
        replace(
            p,
            severity="error",
            message=p.message.replace("it must exist in the cluster", "local mode runs only these files"),
        )
        for p in result.problems
        if p.severity == "warning" and "it must exist in the cluster" in p.message
    ]
    report(result.errors + missing)
    if result.errors or missing:
        return 1
    code = run_pipeline(result, args.workdir, args.force, console)
    if code not in (0, EXIT_FAILED):  # interrupted, or the workdir could not be used: nothing to report
        return code
    written = write_report(args.workdir.resolve())
    table = results_table(args.workdir.resolve())
    if table is not None:
        console.print(table)
        console.print(
            "One seed cannot show whether the masks help; the paired multi-seed experiment is "
            "`freeatm shapesbench study` (docs/study.md)."
        )
    console.print(f"report: {written}")
    return code


def shapesbench_masks(rest: list[str]) -> int:
    from freeatm.runtime.shapesbench.masks import main

    return main(rest)


def shapesbench_check(rest: list[str]) -> int:
    from freeatm.runtime.shapesbench.check import main

    return main(rest)


def shapesbench_study(rest: list[str]) -> int:
    from freeatm.runtime.shapesbench.study import main

    return main(rest)


def add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        type=existing_file,
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file(s) of freeatm resources",
    )


def command(
    subparsers: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int] | None,
    help: str,
) -> argparse.ArgumentParser:
    """A subcommand; with no handler, a group whose help is printed when none of its commands is named."""
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler, reached=parser)
    return parser


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="freeatm",
        description="freeatm: free attention masks → synthetic data → mask-guided pretraining.",
    )
    top.set_defaults(handler=None, reached=top)
    commands = top.add_subparsers(metavar="COMMAND")

    crds_parser = command(
        commands,
        "crds",
        crds,
        "Print the CustomResourceDefinitions generated from the API models (or write them with --out).",
    )
    crds_parser.add_argument("--out", type=Path, help="write one file per CRD into this directory")

    add_files(
        command(
            commands,
            "validate",
            validate,
            "Check resources: schema, references between the documents, dependency cycles. Exit 1 on any error.",
        )
    )

    render_parser = command(
        commands,
        "render",
        render,
        "Print the Jobs and Services the operator would create for these resources (same rendering code).",
    )
    add_files(render_parser)
    render_parser.add_argument("--image", help="runtime image (default: the operator's)")

    operator_parser = command(
        commands,
        "operator",
        operator,
        "Run the kopf operator against the cluster of the current kubeconfig (or in-cluster).",
    )
    operator_parser.add_argument(
        "--namespace", "-n", action="append", default=[], help="namespace to watch (repeat); default: all"
    )
    operator_parser.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics")
    operator_parser.add_argument("--liveness-port", type=int, default=8081, help="port of kopf's /healthz")
    operator_parser.add_argument("--image", help="runtime image of the workloads")
    operator_parser.add_argument("--service-account", help="default ServiceAccount of the workload pods")
    operator_parser.add_argument("--log-level", default="INFO", help="log level")

    run_parser = command(
        commands,
        "run",
        run,
        "Run a pipeline on this machine: validate, order by dependencies, run each stage, report.",
    )
    add_files(run_parser)
    run_parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("freeatm-run"),
        help="where statuses, logs, outputs and the report go",
    )
    run_parser.add_argument(
        "--force", action="store_true", help="rerun stages that already succeeded with the same spec"
    )

    shapesbench = command(
        commands, "shapesbench", None, "ShapesBench: score attention masks, compare pretraining."
    )
    benches = shapesbench.add_subparsers(metavar="COMMAND")
    # Each hands every argument after its name (--help included) to the runtime's own argparse main.
    for name, bench, help in (
        (
            "masks",
            shapesbench_masks,
            "Generate captioned scenes with --model and score each object word's mask (--help for the options).",
        ),
        (
            "check",
            shapesbench_check,
            "Measure how often the baseline's random crops miss every object of a variant (--help for the options).",
        ),
        (
            "study",
            shapesbench_study,
            "Pretrain baseline and mask-guided on ShapesBench and evaluate both (--help for the options).",
        ),
    ):
        benches.add_parser(name, help=help, description=help, add_help=False).set_defaults(bench=bench)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. Usage errors exit 2 through argparse (SystemExit), as --help exits 0."""
    top = parser()
    args, rest = top.parse_known_args(argv)
    if "bench" in args:
        return args.bench(rest)
    if rest:
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.handler is None:  # no command (typer's no_args_is_help): the help of the level reached, exit 2
        args.reached.print_help(sys.stderr)
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
