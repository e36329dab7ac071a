"""Hosting commands of ``pinnacle-release``: ``serve`` (a static server for demos and tests) and
``nginx-config`` (production hosting with the repository's cache headers). Each imports its module
when it runs, so the other commands never load an HTTP server."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.argument("repo_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="0 picks a free port.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve_cmd(repo_dir: Path, host: str, port: int, verbose: bool) -> None:
    """Serve REPO_DIR over HTTP (demos and tests; production uses any static host)."""
    from ..serve import serve

    serve(repo_dir, host, port, quiet=not verbose)


@click.command("nginx-config")
@click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--listen", default=None, metavar="ADDR", help="nginx listen value: 80, 127.0.0.1:8080, [::]:80.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Shorthand for --listen PORT.")
@click.option("--server-name", default="_", show_default=True)
@click.option("--access-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Log every request as one JSON line here (status, bytes, Range, request).")
@click.option("--standalone", "prefix", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Print a whole nginx.conf that runs unprivileged with every path in PREFIX "
                   "(nginx -p PREFIX -c PREFIX/nginx.conf -e stderr); the tests run this.")
def nginx_config_cmd(repo_dir: Path, listen: str | None, port: int | None, server_name: str,
                     access_log: Path | None, prefix: Path | None) -> None:
    """Print nginx configuration serving REPO_DIR with the repository's cache headers."""
    from ..hosting import nginx_site, nginx_standalone

    if listen is not None and port is not None:
        raise click.UsageError("give --listen or --port, not both")
    where = listen or str(port or (8000 if prefix is not None else 80))
    if prefix is not None:
        if access_log is not None or server_name != "_":
            raise click.UsageError("--standalone sets its own access log (PREFIX/access.log) and server name")
        click.echo(nginx_standalone(repo_dir, prefix, listen=where), nl=False)
    else:
        click.echo(nginx_site(repo_dir, listen=where, server_name=server_name, access_log=access_log), nl=False)


COMMANDS: tuple[click.Command, ...] = (serve_cmd, nginx_config_cmd)
