"""The README is short and true: at most 300 lines, every verb of the CLI in its table, every option its commands
use exists, its fast commands and its Python example run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    """The README's fenced code blocks of one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """`qdg-deploy …` command lines of a bash block as argument lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True)[1:] for line in joined.splitlines() if line.startswith("qdg-deploy ")]


def verbs() -> list[str]:
    import typer

    from qdg_deploy.cli import app

    return list(typer.main.get_command(app).commands)


def test_readme_is_short_and_names_every_verb():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for verb in verbs():
        assert re.search(rf"`qdg-deploy {verb}`", text), f"verb {verb} is not in the README's table"
    for marker in ("<!-- zoo-matrix:start -->", "<!-- zoo-matrix:end -->"):
        assert text.count(marker) == 1, marker
    for link in re.findall(r"\]\((docs/[^)#]+)", text):  # links into the docs site point at pages that exist
        assert (README.parent / link).is_file(), link


def test_every_verb_help_runs(cli):
    for verb in verbs():
        r = cli(verb, "--help")
        assert r.returncode == 0 and f"qdg-deploy {verb} [OPTIONS]" in r.stdout, (verb, r.stdout, r.stderr)


def test_every_command_names_options_that_exist(cli):
    """Each `qdg-deploy …` line of the README, with --help added: click parses the whole line before --help acts, so
    an option the verb does not have fails here (exit 2). The quick start's runs themselves take minutes, and what
    they do is tested elsewhere (test_train, test_export, test_bench); the fast ones run below."""
    lines = [args for block in blocks("bash") for args in commands(block)]
    assert {a[0] for a in lines} >= {"train", "eval", "export", "bench"}
    for args in lines:
        r = cli(*args, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, (args, r.stderr)


def test_fast_commands_run_as_written(cli):
    fast = [args for block in blocks("bash") for args in commands(block) if args[-1] == "--list-runtimes"]
    assert fast
    for args in fast:
        r = cli(*args)
        assert r.returncode == 0 and "ort-cpu" in r.stdout, (args, r.stderr)


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) bytes, max \|logit difference\| (\S+)", line)
    assert m and (tmp_path / "my.onnx").stat().st_size == int(m[1]), line
    from test_exact import _x86_vnni

    if _x86_vnni():  # where ORT's integer kernels were measured, the README says 0.0
        assert float(m[2]) == 0.0, line
