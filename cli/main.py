"""`freeatm`: the user's command line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
import yaml
from rich.console import Console

from freeatm.api import manifests
from freeatm.api.crd import all_crds

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="freeatm: free attention masks → synthetic data → mask-guided pretraining.",
)
console = Console()
err = Console(stderr=True)

FILES = typer.Option(
    ..., "-f", "--filename", exists=True, dir_okay=False, help="YAML file(s) of freeatm resources"
)


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


@app.command()
def crds(
    out: Path | None = typer.Option(None, "--out", help="write one file per CRD into this directory"),
) -> None:
    """Print the CustomResourceDefinitions generated from the API models (or write them with --out)."""
    generated = all_crds()
    if out is None:
        typer.echo("---\n".join(dump_yaml(c) for c in generated.values()), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in generated.items():
        (out / name).write_text(dump_yaml(crd))
        err.print(f"wrote {out / name}")


@app.command()
def validate(files: list[Path] = FILES) -> None:
    """Check resources: schema, references between the documents, dependency cycles. Exit 1 on any error."""
    result = manifests.load(files)
    report(result.problems)
    if result.errors:
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {len(result.resources)} resource(s) valid", highlight=False)


@app.command()
def render(
    files: list[Path] = FILES,
    image: str | None = typer.Option(None, "--image", help="runtime image (default: the operator's)"),
) -> None:
    """Print the Jobs and Services the operator would create for these resources (same rendering code)."""
    from freeatm.operator.config import OperatorConfig
    from freeatm.operator.workload import planned_outputs
    from freeatm.operator.workload import render as render_workload

    result = manifests.load(files)
    report(result.errors)
    if result.errors:
        raise typer.Exit(1)
    config = OperatorConfig.from_env(runtime_image=image)
    outputs = planned_outputs(result.resources)
    objects = [obj for r in result.resources for obj in render_workload(r, outputs, config)]
    typer.echo("---\n".join(dump_yaml(o) for o in objects), nl=False)


@app.command()
def operator(
    namespace: list[str] = typer.Option(
        [], "--namespace", "-n", help="namespace to watch (repeat); default: all"
    ),
    metrics_port: int = typer.Option(8080, help="port of /metrics"),
    liveness_port: int = typer.Option(8081, help="port of kopf's /healthz"),
    image: str | None = typer.Option(None, "--image", help="runtime image of the workloads"),
    service_account: str | None = typer.Option(None, help="default ServiceAccount of the workload pods"),
    log_level: str = typer.Option("INFO", help="log level"),
) -> None:
    """Run the kopf operator against the cluster of the current kubeconfig (or in-cluster)."""
    from freeatm.operator.main import run_operator

    run_operator(
        namespace,
        metrics_port,
        liveness_port,
        runtime_image=image,
        service_account=service_account,
        log_level=log_level,
    )


@app.command()
def run(
    files: list[Path] = FILES,
    workdir: Path = typer.Option(
        Path("freeatm-run"), "--workdir", help="where statuses, logs, outputs and the report go"
    ),
    force: bool = typer.Option(
        False, "--force", help="rerun stages that already succeeded with the same spec"
    ),
) -> None:
    """Run a pipeline on this machine: validate, order by dependencies, run each stage, report."""
    from .local_run import results_table, run_pipeline
    from .report import write_report

    result = manifests.load(files)
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
        raise typer.Exit(1)
    code = run_pipeline(result, workdir, force, console)
    if code == 130:
        raise typer.Exit(code)
    written = write_report(workdir.resolve())
    table = results_table(workdir.resolve())
    if table is not None:
        console.print(table)
        console.print(
            "One seed cannot show whether the masks help; the paired multi-seed experiment is "
            "`freeatm shapesbench study` (docs/study.md)."
        )
    console.print(f"report: {written}")
    raise typer.Exit(code)


shapesbench = typer.Typer(
    no_args_is_help=True, help="ShapesBench: score attention masks, compare pretraining."
)
app.add_typer(shapesbench, name="shapesbench")
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@shapesbench.command(context_settings=PASS_THROUGH)
def masks(ctx: typer.Context) -> None:
    """Generate captioned scenes with --model and score each object word's mask (--help for the options)."""
    from freeatm.runtime.shapesbench.masks import main

    raise typer.Exit(main(ctx.args))


@shapesbench.command(context_settings=PASS_THROUGH)
def check(ctx: typer.Context) -> None:
    """Measure how often the baseline's random crops miss every object of a variant (--help for the options)."""
    from freeatm.runtime.shapesbench.check import main

    raise typer.Exit(main(ctx.args))


@shapesbench.command(context_settings=PASS_THROUGH)
def study(ctx: typer.Context) -> None:
    """Pretrain baseline and mask-guided on ShapesBench and evaluate both (--help for the options)."""
    from freeatm.runtime.shapesbench.study import main

    raise typer.Exit(main(ctx.args))


if __name__ == "__main__":
    app()
