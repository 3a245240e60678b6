"""The README's Python example runs as written, and its set-up commands are the two documented ones."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_python_api_example_runs_and_prints_what_its_comments_say(capsys):
    code = re.search(r"```python\n(.*?)```", _section("Python API"), re.S).group(1)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    # a print whose line carries a comment shows what it prints (the comment may end in "..." where it abridges)
    said = [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.startswith("print(") and "# " in line]
    assert said, "the example documents none of its output"
    for comment in said:
        shown = comment.removesuffix("...").rstrip(", ")
        assert any(out.startswith(shown) for out in printed), (comment, printed)


def test_zoo_example_runs():
    code = re.search(r"```python\n(.*?)```", _section("The zoo: small reference models trained here"), re.S).group(1)
    exec(compile(code, "README.md (zoo)", "exec"), {})


def test_exactly_two_setup_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", _section("Set-up"), re.S)
    assert len(commands) == 2
    assert commands[0].endswith("dynaccel bench") and commands[1].endswith("python -m pytest -q")
