"""The Kubernetes "restricted" Pod Security Standard (which includes "baseline") as a checker of pod specs.

Written by hand because no registry package evaluates Pod Security Standards offline; the rules follow
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.25+). Takes a pod spec dict in
camelCase (an API object's `spec`, or a Deployment's `spec.template.spec`).
"""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def _pod_level(pod: dict[str, Any]) -> list[str]:
    problems = [f"{key}: true" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    for volume in pod.get("volumes", []):
        kind = next((k for k in volume if k != "name"), None)
        if kind not in RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {kind} is not allowed")
    sysctls = pod.get("securityContext", {}).get("sysctls", [])
    problems += [f"sysctl {s['name']} is not safe" for s in sysctls if s["name"] not in SAFE_SYSCTLS]
    return problems


def _container(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    name = container["name"]
    pod_sc = pod.get("securityContext", {})
    sc = container.get("securityContext", {})

    def setting(key: str) -> Any:
        return sc.get(key, pod_sc.get(key))

    problems = []
    if sc.get("privileged"):
        problems.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if setting("runAsNonRoot") is not True:
        problems.append("runAsNonRoot must be true")
    if setting("runAsUser") == 0:
        problems.append("runAsUser must not be 0")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp}")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        problems.append("capabilities.drop must include ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append(f"capabilities.add {caps['add']} (only NET_BIND_SERVICE is allowed)")
    if any(p.get("hostPort") for p in container.get("ports", [])):
        problems.append("hostPort")
    if sc.get("procMount", "Default") != "Default":
        problems.append("procMount must be Default")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("hostProcess")
    return [f"container {name}: {p}" for p in problems]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way `pod` breaks the restricted profile; [] when it complies."""
    problems = _pod_level(pod)
    for container in _containers(pod):
        problems += _container(pod, container)
    return problems
