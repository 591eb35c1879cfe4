"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README


def test_readme_starts_with_the_three_commands():
    head = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert "pip install" in head and "fxharden reproduce" in head and "pytest" in head
