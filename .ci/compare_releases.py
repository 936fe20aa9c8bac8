"""Names the installed releases that differ from a constraints file (`make test-newest`: what moved since the pins).

    python .ci/compare_releases.py constraints/pinned.txt
"""

import re
import sys
from importlib.metadata import distributions
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(constraints: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by canonical name; local labels (`+cpu`) dropped."""
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.split("+", 1)[0].strip()
    return pins


def main(constraints: Path) -> None:
    pins = pinned_versions(constraints)
    installed = {canonical(dist.metadata["Name"]): dist.version.split("+", 1)[0] for dist in distributions()}
    moved = [(name, pin, installed[name]) for name, pin in sorted(pins.items()) if installed.get(name, pin) != pin]
    added = sorted(set(installed) - set(pins) - {"pip", "setuptools", "wheel", "vlm-projectors"})
    if not moved and not added:
        print(f"The installed releases are the ones pinned in {constraints}.")
        return
    print(f"The installed releases differ from {constraints}:")
    for name, pinned, version in moved:
        print(f"  {name} {pinned} -> {version}")
    for name in added:
        print(f"  {name} {installed[name]} (not pinned)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
