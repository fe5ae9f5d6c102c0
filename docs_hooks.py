"""mkdocs hook: `<!-- cli-help -->` in a page becomes every verb's `--help`, as the installed CLI prints it.

Generated at build time so the reference cannot fall behind the code (a verb or option added is in the next build)."""

from __future__ import annotations

MARKER = "<!-- cli-help -->"


def verbs() -> list[str]:
    import typer

    from qdg_deploy.cli import app

    return list(typer.main.get_command(app).commands)


def help_text(verb: str) -> str:
    from typer.testing import CliRunner

    from qdg_deploy.cli import app

    r = CliRunner().invoke(
        app, [verb, "--help"], prog_name="qdg-deploy", env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    )
    if r.exit_code != 0:
        raise RuntimeError(f"qdg-deploy {verb} --help exited {r.exit_code}: {r.output}")
    return "\n".join(line.rstrip() for line in r.output.strip("\n").splitlines()).strip("\n")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    parts = [f"## `qdg-deploy {v}`\n\n```text\n{help_text(v)}\n```\n" for v in verbs()]
    return markdown.replace(MARKER, "\n".join(parts))
