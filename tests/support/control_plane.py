"""A real Kubernetes control plane for tests, as controller-runtime's envtest runs one: etcd, kube-apiserver and
kube-controller-manager from `.bin/` (built from the Go modules pinned in tools/k8s/go.mod by `make
control-plane`), on loopback with free ports and a temporary directory.

- etcd: one member, no fsync (the data dies with the test session).
- kube-apiserver: TLS with its own self-signed certificate, RBAC authorization, the default admission plugins
  plus OwnerReferencesPermissionEnforcement, service-account tokens signed by a key made here; the test itself
  is `admin` in `system:masters` through a static token.
- kube-controller-manager: the garbage collector, the namespace controller and the service-account
  controllers (pods need their namespace's `default` ServiceAccount under the ServiceAccount admission plugin).
  No scheduler, no node lifecycle: the test kubelet (support/kubelet.py) binds and runs pods itself.

`start()` waits until the API server is ready; `stop()` ends every process and checks that none is left;
`tails()` gives the end of each component's log for a failing test.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
ADMISSION = "NamespaceLifecycle,ServiceAccount,OwnerReferencesPermissionEnforcement"
CONTROLLERS = ("garbage-collector-controller,namespace-controller,serviceaccount-controller,"
               "root-ca-certificate-publisher-controller")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if not os.access(BIN / name, os.X_OK)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlane:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: list[int] = []
        self.token = secrets.token_hex(16)
        self.url = ""
        self.ca_file = self.dir / "certs" / "apiserver.crt"
        self.kubeconfig_path = self.dir / "admin.kubeconfig"

    # --- lifecycle ---

    def start(self) -> ControlPlane:
        try:
            etcd = self._start_etcd()
            self._start_apiserver(etcd)
            self.write_kubeconfig(self.kubeconfig_path, self.token, "admin")
            self._start("kube-controller-manager", [
                "--kubeconfig", str(self.kubeconfig_path), "--controllers", CONTROLLERS, "--leader-elect=false",
                "--secure-port=0", "--use-service-account-credentials=false", "--root-ca-file", str(self.ca_file),
                "--service-account-private-key-file", str(self.dir / "sa.key")])
        except BaseException:
            print(self.tails())
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):  # one by one: the API server still talks to etcd
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        left = [p for p in self.ports if _listening(p)]
        assert not left, f"ports still open after the control plane stopped: {left}"

    def tails(self, lines: int = 30) -> str:
        out = []
        for name in self.procs:
            log = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name} (last {len(log)} lines) ---\n" + "\n".join(log))
        return "\n".join(out)

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([str(BIN / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # a Ctrl-C to pytest is pytest's alone

    def _port(self) -> int:
        port = free_port()
        self.ports.append(port)
        return port

    def _wait(self, name: str, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def _start_etcd(self) -> str:
        client, peer = self._port(), self._port()
        url = f"http://127.0.0.1:{client}"
        self._start("etcd", [
            "--data-dir", str(self.dir / "etcd"), "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn"])
        self._wait("etcd", lambda: _get(f"{url}/health") is not None, 30)
        return url

    def _start_apiserver(self, etcd: str) -> None:
        port = self._port()
        self.url = f"https://127.0.0.1:{port}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (self.dir / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (self.dir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self._start("kube-apiserver", [
            "--etcd-servers", etcd, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(port), "--cert-dir", str(self.dir / "certs"),
            "--service-cluster-ip-range", "10.96.0.0/16", "--authorization-mode", "RBAC",
            "--token-auth-file", str(self.dir / "tokens.csv"), "--enable-admission-plugins", ADMISSION,
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(self.dir / "sa.pub"),
            "--service-account-signing-key-file", str(self.dir / "sa.key"),
            "--endpoint-reconciler-type=none",  # no in-cluster Service to point at loopback
            "--allow-privileged=false", "--profiling=false", "--v=1"])
        self._wait("kube-apiserver", lambda: self.ca_file.exists() and self._readyz(), 90)

    def _readyz(self) -> bool:
        return _get(f"{self.url}/readyz", self.token, self.ca_file) == "ok"

    # --- access ---

    def write_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
        }))
        return path

    def client(self, token: str | None = None) -> Any:
        import kubernetes

        config = kubernetes.client.Configuration()
        config.host = self.url
        config.ssl_ca_cert = str(self.ca_file)
        config.api_key = {"authorization": f"Bearer {token or self.token}"}
        return kubernetes.client.ApiClient(config)

    def request_counts(self) -> Counter[tuple[str, str, str]]:
        """The API server's own count of requests so far (apiserver_request_total, every client and response
        code), by (verb, resource, subresource); WATCH counts a watch opened, not its events."""
        from prometheus_client.parser import text_string_to_metric_families

        text = _get(f"{self.url}/metrics", self.token, self.ca_file, timeout=10)
        assert text is not None, "the API server's /metrics did not answer"
        counts: Counter[tuple[str, str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            if family.name == "apiserver_request":
                for sample in family.samples:
                    if sample.name == "apiserver_request_total":
                        labels = sample.labels
                        counts[labels["verb"], labels["resource"], labels.get("subresource", "")] += \
                            int(sample.value)
        return counts

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig_path),
                               *args], capture_output=True, text=True, input=input, check=False, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done


def _get(url: str, token: str | None = None, ca: Path | None = None, timeout: float = 2) -> str | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
