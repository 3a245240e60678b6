"""The README's Python example runs as written, and its set-up commands are the two documented ones."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_python_api_example_runs():
    code = re.search(r"```python\n(.*?)```", _section("Python API"), re.S).group(1)
    exec(compile(code, "README.md (Python API)", "exec"), {})


def test_zoo_example_runs():
    code = re.search(r"```python\n(.*?)```", _section("The zoo: small reference models trained here"), re.S).group(1)
    exec(compile(code, "README.md (zoo)", "exec"), {})


def test_exactly_two_setup_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", _section("Set-up"), re.S)
    assert len(commands) == 2
    assert commands[0].endswith("dynaccel bench") and commands[1].endswith("python -m pytest -q")
