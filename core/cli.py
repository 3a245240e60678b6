"""The ``dynaccel`` command line: the root group, ``plugins``, ``strategies [NAME]``, ``presets [list]``.

    dynaccel plugins                 # every plugin with its strategies, family, distribution and version
    dynaccel strategies              # one line per strategy
    dynaccel strategies teacache     # its config fields: type, default, range, doc
    dynaccel strategies --json       # the same for machines
    dynaccel presets                 # presets with their provenance

Every other command comes from a plugin's ``register_commands`` hook, the built-in ones too: ``bench``,
``calibrate``, ``demo``, ``quickstart`` and ``presets push|pull`` are registered by the built-in plugin
``dynaccel.hf`` (``dynaccel.hf_integration.commands``) exactly as a third party's commands are.
"""

from __future__ import annotations

import json
import sys
import warnings

import click

from .errors import DynaccelError
from .registry import get_registry


@click.group()
@click.version_option(package_name="dynaccel", message="dynaccel %(version)s")
def cli() -> None:
    """dynaccel: training-free dynamic inference acceleration."""


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(as_json: bool) -> None:
    """List loaded plugins: strategies (with family), adapters, distribution and version."""
    reg = get_registry()
    entries = []
    for info in reg.plugins.values():
        entries.append(
            {
                "plugin": info.name,
                "strategies": [{"name": s, "family": reg.strategies[s].family} for s in info.strategies],
                "adapters": info.adapters,
                "presets": len(info.presets),
                "distillers": list(info.distillers),
                "distribution": info.distribution,
                "version": info.version,
                "builtin": info.builtin,
            }
        )
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    rows = [
        [
            e["plugin"],
            ", ".join([f"{s['name']} ({s['family']})" for s in e["strategies"]]
                      + [f"{d} (distillation)" for d in e["distillers"]]) or "-",
            ", ".join(e["adapters"]) or "-",
            e["distribution"],
            e["version"],
        ]
        for e in entries
    ]
    click.echo(table(rows, ["plugin", "strategies (family)", "adapters", "distribution", "version"]))


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def strategies(name: str | None, as_json: bool) -> None:
    """List strategies, or show NAME's config fields (type, default, range, doc)."""
    reg = get_registry()
    if name is None:
        described = [reg.strategies[n].describe() for n in sorted(reg.strategies)]
        if as_json:
            click.echo(json.dumps(described, indent=2))
            return
        rows = [[d["name"], d["family"], d["summary"]] for d in described]
        click.echo(table(rows, ["strategy", "family", "what it does"]))
        return
    d = reg.strategy(name).describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{d['name']} ({d['family']}): {d['summary']}")
    click.echo(f"paper: {d['paper']}")
    rows = []
    for f in d["fields"]:
        if f["choices"]:
            rng = " | ".join(map(str, f["choices"]))
        elif f["min"] is not None or f["max"] is not None:
            lo, hi = "(" if f.get("min_exclusive") else "[", ")" if f.get("max_exclusive") else "]"
            rng = f"{lo}{'' if f['min'] is None else f['min']}, {'' if f['max'] is None else f['max']}{hi}"
        else:
            rng = "-"
        rows.append([f["name"], f["type"], repr(f["default"]), rng, f["doc"]])
    click.echo(table(rows, ["option", "type", "default", "range", "doc"]))


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def presets(ctx: click.Context, as_json: bool) -> None:
    """List presets (the default); plugins add subcommands (the built-in Hub plugin: push, pull)."""
    if ctx.invoked_subcommand is None:
        _list_presets(as_json)


def _list_presets(as_json: bool) -> None:
    reg = get_registry()
    items = [reg.presets[n] for n in sorted(reg.presets)]
    if as_json:
        click.echo(json.dumps([json.loads(p.to_json()) for p in items], indent=2))
        return
    rows = [[p.name, p.strategy, json.dumps(p.config), p.architecture or "-", p.provenance.get("source", "-")] for p in items]
    click.echo(table(rows, ["preset", "strategy", "config", "architecture", "source"]))


@presets.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def presets_list(as_json: bool) -> None:
    """List built-in and plugin presets with their provenance."""
    _list_presets(as_json)


_commands_added_for: object = None  # the registry whose plugins' commands are on ``cli``


def _load_plugin_commands() -> None:
    """Let every plugin add its commands (once per registry; a plugin whose hook raises is skipped with a warning)."""
    global _commands_added_for
    reg = get_registry()
    if _commands_added_for is not reg:
        reg.register_commands(cli)
        _commands_added_for = reg


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)  # one line, no source location


def main(argv: list[str] | None = None) -> None:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            _load_plugin_commands()
            cli.main(args=argv, prog_name="dynaccel", standalone_mode=False)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except DynaccelError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


if __name__ == "__main__":
    main()
