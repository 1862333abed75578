"""The queue consumer: a long-running function (a Cloud Run worker pool), started explicitly.

`invoke worker` or `python -m functions.consumer`. Nothing happens at import; SIGTERM finishes running jobs
(a second SIGTERM stops at once; unfinished jobs return to the queue).
"""

import asyncio
import logging
import signal
import sys

from shared.bootstrap import open_deps
from shared.bulk.drain import drain_forever
from shared.core.settings import get_settings
from shared.creation.consumer import Consumer


async def consumer() -> int:
    """Run one consumer until SIGTERM/SIGINT; the exit code says whether it stopped cleanly."""
    settings = get_settings()
    deps = await open_deps(settings, role="consumer")
    try:
        worker = Consumer(deps, name=settings.instance_name or None, drain=drain_forever)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        await worker.start()
        return await worker.wait()
    finally:
        await deps.aclose()


def main() -> None:
    """Process entry point: on uvloop (the event loop the HTTP functions get from uvicorn) where installed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the standard loop
        sys.exit(asyncio.run(consumer()))
    sys.exit(uvloop.run(consumer()))


if __name__ == "__main__":
    main()
