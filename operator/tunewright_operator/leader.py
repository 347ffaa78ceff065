"""One active operator: a coordination.k8s.io Lease, as controller-runtime's leader election does it.

A process reconciles only while it holds the Lease `tunewright-operator` in its namespace. It waits for the
Lease before Kopf starts (answering /healthz meanwhile, so a waiting replica is not restarted), renews it
every 1/7.5 of the lease duration (at least 1 s), and exits at once (status 1) when renewing has failed for
2/3 of it: before the lease can expire and another process take it, so two processes never act at once.
(controller-runtime's defaults have the same proportions: 15 s lease, 10 s renew deadline, 2 s retry.)

Built on the official client's leader election (LeaseLock, LeaderElection); only the split is ours: waiting
(acquire) in the main thread, renewing in a thread, so that Kopf keeps the main thread and its signal handling.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading

from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

LEASE = "tunewright-operator"

log = logging.getLogger("tunewright.operator")


def identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


class _Waiting(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"waiting for the lease\n")

    def log_message(self, *_: object) -> None:  # one line per probe otherwise
        pass


def _lost() -> None:
    log.error("lost the lease %s: exiting so that another operator can take over", LEASE)
    os._exit(1)  # Kopf cannot be stopped in time; a restarted process waits for the lease again


def hold(namespace: str, health_port: int, seconds: int) -> None:
    """Block until this process holds the lease (of `seconds`), then keep it (renewing in a thread) or exit."""
    config = electionconfig.Config(LeaseLock(LEASE, namespace, identity()), seconds, seconds * 2 / 3,
                                   max(1.0, seconds / 7.5), onstarted_leading=lambda: None, onstopped_leading=_lost)
    election = leaderelection.LeaderElection(config)
    health = http.server.ThreadingHTTPServer(("0.0.0.0", health_port), _Waiting) if health_port else None
    if health:
        threading.Thread(target=health.serve_forever, daemon=True).start()
    log.info("%s: waiting for the lease %s/%s", identity(), namespace, LEASE)
    election.acquire()
    if health:
        health.shutdown()
        health.server_close()  # Kopf's liveness endpoint takes the port
    log.info("%s: holds the lease %s/%s", identity(), namespace, LEASE)
    threading.Thread(target=lambda: (election.renew_loop(), _lost()), daemon=True, name="lease").start()
