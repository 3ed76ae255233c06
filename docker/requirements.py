"""Print the requirements of pyproject.toml's dependencies plus the given extras, one a line, for `pip -r`.

    python docker/requirements.py pyproject.toml local,onnx,openai > requirements.txt

Extras that name the project itself (``pgsyncer[local]``) are expanded; the project is left out. The Dockerfile
installs these under docker/constraints.txt before syncer's own wheel, so that a code change does not reinstall
them (the layer depends on pyproject.toml and the constraints only).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(project: dict, extras: list[str]) -> list[str]:
    """The project's dependencies and those of ``extras``, self-references expanded, in first-seen order."""
    self_ref = re.compile(rf"^{re.escape(project['name'])}\[([^\]]*)\]$", re.IGNORECASE)
    optional = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r} (known: {', '.join(sorted(optional))})")
        seen.add(extra)
        for requirement in optional[extra]:
            match = self_ref.match(requirement.replace(" ", ""))
            if match:
                pending.extend(e for e in match.group(1).split(",") if e)
            elif requirement not in found:
                found.append(requirement)
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python docker/requirements.py PYPROJECT [EXTRA,EXTRA...]", file=sys.stderr)
        return 2
    project = tomllib.loads(Path(argv[1]).read_text())["project"]
    extras = [e.strip() for e in (argv[2] if len(argv) == 3 else "").split(",") if e.strip()]
    print("\n".join(requirements(project, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
