"""`freeatm`: the user's command line."""

from __future__ import annotations

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
    for p in result.problems:
        style = "red" if p.severity == "error" else "yellow"
        err.print(
            f"[{style}]{p.severity}[/]: {p.file}: {p.document}: [bold]{p.path}[/]: {p.message}",
            highlight=False,
            soft_wrap=True,
        )
    if result.errors:
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {len(result.resources)} resource(s) valid", highlight=False)


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
    missing = [p for p in result.problems if p.severity == "warning" and p.path != "apiVersion/kind"]
    for p in result.errors + missing:
        err.print(
            f"[red]error[/]: {p.file}: {p.document}: [bold]{p.path}[/]: {p.message}",
            highlight=False,
            soft_wrap=True,
        )
    if result.errors or missing:
        raise typer.Exit(1)
    code = run_pipeline(result, workdir, force, console)
    if code == 130:
        raise typer.Exit(code)
    report = write_report(workdir.resolve())
    table = results_table(workdir.resolve())
    if table is not None:
        console.print(table)
    console.print(f"report: {report}")
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
