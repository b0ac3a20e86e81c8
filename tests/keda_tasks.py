"""Tasks for tests/test_keda.py: each holds a worker slot until the test releases it."""

import time
from pathlib import Path

import runq

app = runq.App()


@app.task(name="hold", retries=0)
def hold(release: str, seconds: float = 600, started: str | None = None) -> str:
    """Busy until ``release`` exists (or ``seconds`` pass): a slot the test can count. Touches
    ``started`` first, so the test knows the slot is taken rather than guessing from timing."""
    if started is not None:
        Path(started).touch()
    deadline = time.monotonic() + seconds
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"
