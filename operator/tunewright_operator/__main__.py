"""`python -m tunewright_operator [flags]`: run the operator (flags: --help; each also reads TUNEWRIGHT_*)."""

from __future__ import annotations

import logging
import sys

import kopf

from tunewright_operator import handlers, kube, leader, reconcile
from tunewright_operator.settings import Settings


def main(argv: list[str] | None = None) -> int:
    settings = Settings.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per liveness probe otherwise
    # Kopf's handler threads, the admission pool, the poll loop and the leader's renewals may call at once.
    kube.load_config(handlers.HANDLER_THREADS + reconcile.ADMIT_THREADS + 2)
    leader.hold(settings.lease_namespace or (settings.namespaces or ("default",))[0], settings.health_port,
                settings.lease_seconds)
    handlers.register(settings, kube.Kube())
    health = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    # standalone: one active process is leader.hold's job (a Lease), so no Kopf peering objects are needed.
    kopf.run(standalone=True, clusterwide=not settings.namespaces, namespaces=settings.namespaces,
             liveness_endpoint=health)
    return 0


if __name__ == "__main__":
    sys.exit(main())
