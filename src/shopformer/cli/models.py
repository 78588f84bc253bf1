"""``shopformer models``: the registered model architectures, and the model registry's versions.

    shopformer models                              registered architectures (as before)
    shopformer models add REGISTRY RUN [--dataset DS]   import a trained run as a version (current)
    shopformer models list REGISTRY                versions: status, current, data, gate, drift
    shopformer models show REGISTRY VERSION        one version's manifest (JSON)
    shopformer models promote REGISTRY VERSION     make a version current (never a rejected one)
    shopformer models rollback REGISTRY [VERSION]  back to the previously current version
    shopformer models report REGISTRY [VERSION]    (re)write VERSION/report/: drift, validation, gate plots

A running service follows a switch at once with ``shopformer serve REGISTRY/current --watch``, or on
its next ``POST /v1/admin/reload`` of ``REGISTRY/current``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import USER_ERRORS, console, fail

RegistryArg = Annotated[Path, typer.Argument(help="model registry directory")]


def models_group(architectures: Callable[[], None]) -> typer.Typer:
    """The ``models`` command group; without a sub-command it runs ``architectures`` (the old listing)."""
    group = typer.Typer(help="Registered architectures (without a sub-command); the model registry: add, list, "
                        "show, promote, rollback.", no_args_is_help=False, invoke_without_command=True)

    @group.callback()
    def main(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            architectures()

    group.command("add")(add_command)
    group.command("list")(list_command)
    group.command("show")(show_command)
    group.command("promote")(promote_command)
    group.command("rollback")(rollback_command)
    group.command("report")(report_command)
    return group


def _fmt(value: object, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def list_command(registry: RegistryArg) -> None:
    """List the versions: status, current, data window, events, gate and drift."""
    from shopformer.pipelines.registry import Registry

    try:
        versions = Registry(registry).versions()
    except USER_ERRORS as err:
        fail(str(err))
    if not versions:
        console.print(f"{registry}: no versions yet")
    for v in versions:
        console.print("\n".join(version_lines(v)), highlight=False, soft_wrap=True)
    console.print("* = current", highlight=False)


def version_lines(v: dict) -> list[str]:
    """Three lines about one version: identity and data; gate; drift and the status reason."""
    window = v.get("data_window", {})
    day = (window.get("start_utc") or "-")[:10], (window.get("end_utc") or "-")[:10]
    added = v.get("growth", {}).get("added", {}).get("items")
    events = v.get("events", {}).get("total", "-")
    lines = [f"{v['version']}{' *' if v['current'] else '  '} {v.get('status', '?'):9s} parent {v.get('parent') or '-'}"
             f"  created {v.get('created', '-')}  data {day[0]}..{day[1]}  events {events}"
             + (f" (+{added} items)" if added is not None else "")]
    gate = v.get("gate")
    if gate:
        systems, metric = gate.get("systems", {}), gate.get("metric", "")
        others = ", ".join(f"{name} {_fmt(row.get(metric), '.4f')}" for name, row in systems.items()
                           if name != "candidate" and (name.startswith("current") or name == gate.get("best_baseline")))
        lines.append(f"      gate {metric} {_fmt(systems.get('candidate', {}).get(metric), '.4f')} on "
                     f"{gate.get('examples')} examples ({others})")
    drift = v.get("drift")
    if drift:
        lines.append(f"      drift: unknown items {_fmt(drift.get('unknown_item_share'), '.1%')} of new events, "
                     f"behaviour PSI {_fmt(drift.get('behaviour_psi'))}, JS {_fmt(drift.get('behaviour_js'))}; "
                     f"top-1 scores vs parent PSI {_fmt(drift.get('score_psi'))}, JS {_fmt(drift.get('score_js'))}")
    if v.get("reason"):
        lines.append(f"      {v.get('status')}: {v['reason']}")
    return lines


def show_command(registry: RegistryArg, version: Annotated[str, typer.Argument()]) -> None:
    """Print one version's manifest (JSON)."""
    from shopformer.pipelines.registry import Registry

    try:
        manifest = Registry(registry).read(version)
    except USER_ERRORS as err:
        fail(str(err))
    print(json.dumps(manifest, indent=2))


def add_command(
    registry: RegistryArg,
    run: Annotated[Path, typer.Argument(help="trained run directory (RUN/model or the experiment folder)")],
    dataset: Annotated[Path | None, typer.Option(help="its dataset directory (default: the one it was trained on)")]
    = None,
    promote: Annotated[bool, typer.Option(help="make it current")] = True,
) -> None:
    """Import a trained run and its data set as a new version (the start of a registry)."""
    from shopformer.artifacts import ArtifactError
    from shopformer.cli.common import model_dir
    from shopformer.pipelines.continuous import add_run
    from shopformer.pipelines.registry import RegistryLocked

    try:
        version = add_run(registry, model_dir(run), dataset, promote=promote)
    except RegistryLocked as err:
        console.print(f"[yellow]locked:[/yellow] {err}", highlight=False)
        raise typer.Exit(3) from None
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]
        fail(str(err))
    console.print(f"added {version}" + (" (current)" if promote else ""))


def promote_command(registry: RegistryArg, version: Annotated[str, typer.Argument()]) -> None:
    """Make VERSION current (a rejected version never becomes current)."""
    from shopformer.pipelines.registry import Registry

    try:
        Registry(registry).promote(version)
    except USER_ERRORS as err:
        fail(str(err))
    console.print(f"{version} is current")


def rollback_command(
    registry: RegistryArg,
    version: Annotated[str | None, typer.Argument(help="an earlier current version (default: the last one)")] = None,
) -> None:
    """Make the previously current version current again."""
    from shopformer.pipelines.registry import Registry

    try:
        target = Registry(registry).rollback(version)
    except USER_ERRORS as err:
        fail(str(err))
    console.print(f"rolled back: {target} is current")


def report_command(
    registry: RegistryArg,
    version: Annotated[str | None, typer.Argument(help="the version (default: the newest)")] = None,
) -> None:
    """Write VERSION's report (drift over time, validation per version, gate decisions; plots)."""
    from shopformer.pipelines.version_report import write_version_report

    try:
        out = write_version_report(registry, version)
    except USER_ERRORS as err:
        fail(str(err))
    console.print(f"report: {out / 'report.md'}", highlight=False)
