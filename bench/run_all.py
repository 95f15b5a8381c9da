"""`make bench`: run every benchmark script in bench/ in turn; each merges into results.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# Each script runs as __main__ with bench/ at the END of sys.path: its shared `_results` module is
# found there, while bench/faststream.py (the benchmark) never shadows the faststream package.
# The script sees only its own name in sys.argv, as when run directly (some parse arguments).
RUNNER = (
    "import runpy, sys; sys.path.append(sys.argv[1]); script = sys.argv[2]; "
    "sys.argv = [script]; runpy.run_path(script, run_name='__main__')"
)


def main() -> int:
    scripts = sorted(
        p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py"
    )
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        command = [sys.executable, "-c", RUNNER, str(HERE), str(script)]
        if subprocess.run(command, cwd=HERE.parent, check=False).returncode:
            failed.append(script.stem)
    print(f"results in {HERE / 'results.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
