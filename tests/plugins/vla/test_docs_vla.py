"""docs/vla.md's example runs as written on the zoo's tiny-pi0 and prints what its comment says."""

import re
from pathlib import Path

from robot_sim import require_simulator

DOC = (Path(__file__).resolve().parents[3] / "docs" / "vla.md").read_text()


def test_the_example_runs_and_prints_what_it_says(capsys):
    require_simulator()
    code = re.search(r"```python\n(.*?)```", DOC, re.S).group(1)
    exec(compile(code, "docs/vla.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    said = [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.startswith("print(")]
    assert said and printed[-1] == said[-1], (printed, said)
