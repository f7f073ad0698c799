"""The orchestrator's actors and the pieces they share.

No actor speaks TLS, but asyncio imports ``ssl`` eagerly, which maps OpenSSL into every process
that uses asyncio (gateway, routers, scanner, UI; docs/architecture.md, "What imports cost"). Marking
``ssl`` as unavailable before anything imports it keeps the idle system small; asyncio and the
standard library treat a missing ``ssl`` as "no TLS". A process that already loaded ``ssl``
(a test runner, say) keeps it.
"""
import sys

sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
