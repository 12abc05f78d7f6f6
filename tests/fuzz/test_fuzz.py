"""Coverage-guided fuzzing (atheris) of the edge's parsers, a bounded time per target, from the repo's corpus.

Each target runs in its own process for FUZZ_SECONDS (default 8; `FUZZ_SECONDS=600 ./test.sh -k fuzz`
for a longer hunt). An input that makes a target raise, hang past 5 s, or grow past 2 GB fails the
test with the input, to be added to `corpus/<target>/` once fixed. New inputs the fuzzer finds go to a
temporary directory, never into the repository.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
SECONDS = int(os.environ.get("FUZZ_SECONDS", "8"))

atheris = pytest.importorskip("atheris", reason="atheris (coverage-guided fuzzing) has no wheel for this Python")


async def fuzz(target: str, workdir: Path) -> str:
    """Run one target; returns the fuzzer's summary line, or fails with the input that broke it."""
    found = workdir / target
    found.mkdir()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fuzz.run",
        target,
        f"-max_total_time={SECONDS}",
        "-timeout=5",
        "-rss_limit_mb=2048",
        "-max_len=65536",
        f"-artifact_prefix={workdir}/{target}-",
        str(found),
        str(CORPUS / target),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )
    output, _ = await asyncio.wait_for(process.communicate(), SECONDS + 60)
    text = output.decode(errors="replace")
    artifacts = {p.name: base64.b64encode(p.read_bytes()[:2000]).decode() for p in workdir.glob(f"{target}-*-*")}
    assert process.returncode == 0, (target, artifacts, text[-3000:])
    return next((line for line in reversed(text.splitlines()) if line.startswith("Done ")), "no summary")


async def test_every_target_survives_its_fuzzing(tmp_path: Path) -> None:
    """Two targets at a time: one per core of the CI machine."""
    cores = asyncio.Semaphore(2)

    async def one(target: str) -> str:
        async with cores:
            return f"{target}: {await fuzz(target, tmp_path)}"

    for summary in await asyncio.gather(*(one(target) for target in sorted(TARGETS))):
        print(f"[fuzz] {summary}")
