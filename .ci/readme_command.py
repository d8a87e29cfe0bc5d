"""Print one of the two quickstart commands from README.md ('main' or 'test'), for .ci/run."""

import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent / "README.md"
blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme.read_text(), flags=re.S)
commands = [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]
if len(commands) != 2:
    sys.exit(f"README quickstart must hold exactly two commands, found {len(commands)}")
if "pytest" not in commands[1]:
    sys.exit(f"README's second quickstart command must run the test suite (pytest): {commands[1]!r}")
print(commands[{"main": 0, "test": 1}[sys.argv[1]]])
