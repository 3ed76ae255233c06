"""Readers for the deployment files that tests/test_deploy*.py check: a Dockerfile's stages, .dockerignore,
PromQL's metric names, and CRD schemas made strict the way the API server's strict field validation is."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import promql_parser

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# The database roles of docker/compose.yml and docker/kubernetes (created by docker/initdb/10-roles.sh).
WORKER_ROLE, OWNER_ROLE, READER_ROLE = "syncer_worker", "syncer_owner", "app_reader"


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, the assertion shows what it printed."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docker_requirements = _load(DOCKER / "requirements.py")  # the Dockerfile's requirements from pyproject.toml

# ------------------------------------------------------------------------------------------------ Dockerfile


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]  # (INSTRUCTION, its arguments on one line)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def env(self) -> dict[str, str]:
        """The stage's own ENV, in the `ENV A=1 B=2` form."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages in order. Continuation lines are joined and comment lines dropped, as BuildKit does."""
    stages: list[Stage] = []
    logical, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            logical.append(pending.strip())
        pending = ""
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(name.strip() or str(len(stages)), base.strip(), []))
        elif stages:
            stages[-1].instructions.append((instruction, args))
    return stages


def stage_chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest last."""
    by_name = {stage.name: stage for stage in stages}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


@functools.cache
def image_env(target: str) -> dict[str, str]:
    """The ENV an image target of docker/Dockerfile ends with."""
    stages = dockerfile_stages((DOCKER / "Dockerfile").read_text())
    return {k: v for stage in stage_chain(stages, target) for k, v in stage.env().items()}


def pip_installs(run_args: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN's shell command."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "(", ")"):
            commands.append([])
        else:
            commands[-1].append(token)
    found = []
    for words in commands:
        for i, word in enumerate(words[:-1]):
            if word.endswith("pip") and words[i + 1] == "install":
                found.append(words[i + 2 :])
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns leave ``path`` (or a folder above it) out of the build context.

    Docker matches with Go's filepath.Match plus `**`; fnmatch agrees on the patterns this repository uses.
    Later patterns win, and `!pattern` puts a path back."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        variants = {pattern, pattern.replace("**/", "")}
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            ignored = not negate
    return ignored


def dockerignore_patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ------------------------------------------------------------------------------------------------ PromQL

GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects; Grafana's interval variables stand for 5m.

    Raises ValueError for an expression that does not parse, or a selector without a metric name."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expr)), visit)
    return names


# ------------------------------------------------------------------------------------------------ schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema that rejects unknown fields, as `kubectl apply --validate=strict` does: the API server
    otherwise prunes them silently, so a misspelt field would be lost without a word."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
