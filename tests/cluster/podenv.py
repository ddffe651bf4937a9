"""How a pod's container becomes a local process: its env, mounts and command line.

Pure functions, no I/O beyond materializing volume files (the test kubelet's, tests/cluster/kubelet.py). The pod's file
system is the host's, except for its volume mounts: every mount point
(`/workspace`, `/etc/kubetune`, the termination message path) maps to a host
folder, and every env value, argument and working dir that names a path
under a mount point is rewritten to the host folder. So the
contract's path variables (KUBETUNE_RECIPE, KUBETUNE_WORKSPACE,
KUBETUNE_TERMINATION_LOG) and anything else (HF_HOME=/workspace/cache) land
in per-pod or per-PVC temp dirs, and the termination message's paths are
mapped back before the operator reads them.

Written by hand because nothing in the Python ecosystem runs pod specs
without containers; the semantics follow the Kubernetes docs (`$(VAR)`
expansion, downward API field paths, ConfigMap/Secret volume items).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message

Lookup = Callable[[str, str], dict[str, Any] | None]  # (namespace, name) -> object or None


class PodSetupError(Exception):
    """The pod cannot start yet or at all (a missing ConfigMap, no command); `reason` is the kubelet's word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Mounts:
    """Mount points of one container and the host folders behind them, longest first."""

    paths: list[tuple[str, Path]] = field(default_factory=list)

    def add(self, mount_path: str, host: Path) -> None:
        """Map a mount point to a host path."""
        self.paths.append((mount_path.rstrip("/") or "/", host))
        self.paths.sort(key=lambda item: -len(item[0]))

    def to_host(self, text: str) -> str:
        """Rewrite every in-pod path under a mount point inside `text` to its host path.

        One pass over all mount points (longest first): a host path written in may itself start with
        another mount point (a pod's /tmp while its volumes live under the host's /tmp) and must not
        be rewritten again.
        """
        if not self.paths:
            return text
        hosts = dict(self.paths)
        alternatives = "|".join(re.escape(mount_path) for mount_path, _ in self.paths)
        pattern = r"(?<![\w/.-])(" + alternatives + r")(?=/|$|[\s:,;\"'])"
        return re.sub(pattern, lambda match: str(hosts[match.group(1)]), text)

    def to_pod(self, text: str) -> str:
        """Rewrite host paths back to in-pod paths (for termination messages and logs)."""
        for mount_path, host in sorted(self.paths, key=lambda item: -len(str(item[1]))):
            text = text.replace(str(host), mount_path)
        return text


def field_ref(pod: dict[str, Any], path: str) -> str:
    """Resolve a downward-API `fieldRef.fieldPath` against a pod."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((pod["metadata"].get(match.group(1)) or {}).get(match.group(2), ""))
    value: Any = pod
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _secret_value(secret: dict[str, Any], key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    raw = (secret.get("data") or {}).get(key)
    return None if raw is None else base64.b64decode(raw).decode()


def _value_from(pod: dict[str, Any], source: dict[str, Any], configmaps: Lookup, secrets: Lookup) -> str | None:
    ns = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_ref(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return "1"  # no cgroups here; a divisor-free count keeps launchers that read it working
    ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
    is_secret = "secretKeyRef" in source
    obj = (secrets if is_secret else configmaps)(ns, ref["name"])
    value = None if obj is None else (_secret_value(obj, ref["key"]) if is_secret else (obj.get("data") or {}).get(ref["key"]))
    if value is None and not ref.get("optional"):
        kind = "secret" if is_secret else "configmap"
        raise PodSetupError("CreateContainerConfigError", f'{kind} "{ref["name"]}" or its key "{ref["key"]}" not found')
    return value


def container_env(pod: dict[str, Any], container: dict[str, Any], configmaps: Lookup, secrets: Lookup) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom first, then env with `$(VAR)` expansion."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        is_secret = "secretRef" in source
        ref = source.get("secretRef") or source.get("configMapRef")
        obj = (secrets if is_secret else configmaps)(ns, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise PodSetupError("CreateContainerConfigError", f'{"secret" if is_secret else "configmap"} "{ref["name"]}" not found')
        keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
        for key in keys:
            value = _secret_value(obj, key) if is_secret else obj["data"][key]
            env[source.get("prefix", "") + key] = value or ""
    for item in container.get("env") or []:
        if "valueFrom" in item:
            value = _value_from(pod, item["valueFrom"], configmaps, secrets)
            if value is not None:
                env[item["name"]] = value
        else:
            env[item["name"]] = expand(item.get("value", ""), env)
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: unknown references stay as written, `$$` escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def materialize_volumes(pod: dict[str, Any], pod_dir: Path, pvc_dir: Callable[[str], Path],
                        configmaps: Lookup, secrets: Lookup) -> dict[str, Path]:
    """Create a host folder per pod volume (PVCs shared by claim name); returns volume name -> folder."""
    ns = pod["metadata"]["namespace"]
    folders: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            folders[name] = pvc_dir(volume["persistentVolumeClaim"]["claimName"])
            folders[name].mkdir(parents=True, exist_ok=True)
            continue
        folder = pod_dir / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        folders[name] = folder
        source = volume.get("configMap") or volume.get("secret")
        if source is not None:
            is_secret = "secret" in volume
            ref_name = source.get("secretName") if is_secret else source.get("name")
            obj = (secrets if is_secret else configmaps)(ns, ref_name)
            if obj is None:
                if source.get("optional"):
                    continue
                raise PodSetupError("ContainerCreating", f'MountVolume.SetUp failed for volume "{name}": '
                                    f'{"secret" if is_secret else "configmap"} "{ref_name}" not found')
            keys = sorted(set(obj.get("data") or {}) | set(obj.get("stringData") or {}))
            items = source.get("items") or [{"key": key, "path": key} for key in keys]
            for item in items:
                value = _secret_value(obj, item["key"]) if is_secret else (obj.get("data") or {}).get(item["key"])
                if value is not None:
                    target = folder / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(value, encoding="utf-8")
    return folders


def container_mounts(container: dict[str, Any], volumes: dict[str, Path], termination_file: Path) -> Mounts:
    """The container's mount table, its termination message path included."""
    mounts = Mounts()
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in volumes:
            host = volumes[mount["name"]] / mount.get("subPath", "") if mount.get("subPath") else volumes[mount["name"]]
            host.mkdir(parents=True, exist_ok=True)
            mounts.add(mount["mountPath"], host)
    mounts.add(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH, termination_file)
    return mounts


def resolve_hosts(text: str, hosts: dict[str, str]) -> str:
    """Replace pod DNS names (`<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]`) by pod IPs."""
    for fqdn in sorted(hosts, key=len, reverse=True):
        if text == fqdn:
            return hosts[fqdn]
    return text


@dataclass
class ProcessSpec:
    """Everything needed to start one container as a local process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: Mounts
    termination_file: Path
    fallback_to_logs: bool


def process_spec(pod: dict[str, Any], container: dict[str, Any], *, base_env: dict[str, str], env: dict[str, str],
                 mounts: Mounts, hosts: dict[str, str], pod_dir: Path, termination_file: Path,
                 entrypoints: dict[str, list[str]]) -> ProcessSpec:
    """Turn a resolved container into a command line, env and working dir on this host."""
    command = container.get("command") or entrypoints.get(container.get("image", ""))
    if not command:
        raise PodSetupError("CreateContainerError", f'container "{container["name"]}" has no command and image '
                            f'"{container.get("image")}" has no known entrypoint in the test kubelet')
    env = {key: mounts.to_host(resolve_hosts(value, hosts)) for key, value in env.items()}
    argv = [mounts.to_host(resolve_hosts(expand(arg, env), hosts)) for arg in [*command, *(container.get("args") or [])]]
    cwd = Path(mounts.to_host(container["workingDir"])) if container.get("workingDir") else pod_dir / "root"
    cwd.mkdir(parents=True, exist_ok=True)
    hostname = pod["spec"].get("hostname") or pod["metadata"]["name"]
    return ProcessSpec(argv=argv, env={**base_env, "HOSTNAME": hostname, **env}, cwd=cwd, mounts=mounts,
                       termination_file=termination_file,
                       fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError")


def termination_message(spec: ProcessSpec, log_file: Path, failed: bool) -> str:
    """The container's termination message as the kubelet reports it (paths mapped back into the pod)."""
    text = spec.termination_file.read_text(encoding="utf-8", errors="replace") if spec.termination_file.exists() else ""
    if not text.strip() and failed and spec.fallback_to_logs and log_file.exists():
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-80:]
        text = "\n".join(lines)[-2048:]
    return spec.mounts.to_pod(text)[:TERMINATION_MESSAGE_LIMIT]
