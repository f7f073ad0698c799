"""A gateway whose router watch raises on its first run in a config folder: drives the task supervision test.

Run by the supervisor in place of actors.gateway (ACTOR_MODULES); the restarted one finds the mark and runs normally.
"""
from actors.core.runner import run_actor
from actors.gateway.gateway import Gateway

CRASH_MARK = "watch-task-crashed"


class WatchDiesOnce(Gateway):
    async def _watch_routers(self) -> None:
        mark = self.runtime.config_dir / CRASH_MARK
        if not mark.exists():
            mark.touch()
            raise RuntimeError("router watch failed (injected by the test)")
        await super()._watch_routers()


raise SystemExit(run_actor("gateway", WatchDiesOnce))
