"""The README's `auto` example runs as written."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_auto_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## `auto`: one optimizer, no learning rate", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "linear decay to step 200" in out and "step_size" in out
