"""Hot reload in the running gateway: atomic swaps under load, a broken file never replaces a good one."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.pki import PkiPaths
from tests.support.fake_worker import start_fake_worker
from tests.support.gateway import start_gateway, upstream
from tests.support.identity import TestIssuer
from tests.support.worker import gateway_ssl

POLICY = """
version: 1
bindings:
  - name: engineers
    when: {{claim: groups, contains: ml-engineers}}
    roles: [engineer]
roles:
  engineer:
    models: ["fake-*"]
    max_tokens: {cap}
"""
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


def replace_file(path: Path, text: str) -> None:
    """Swap the file in one rename, as a ConfigMap update or an editor's save does."""
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(path)


def readyz_policy(url: str) -> dict[str, object]:
    policy: dict[str, object] = httpx.get(f"{url}/readyz", timeout=5).json()["policy"]
    return policy


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


@pytest.mark.slow
def test_good_and_bad_policies_swap_under_load_without_a_failed_request(
    pki: PkiPaths, tmp_path: Path
) -> None:
    issuer = TestIssuer(tmp_path / "idp")
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "main.yaml"
    policy_file.write_text(POLICY.format(cap=256))
    worker, worker_url = start_fake_worker(pki.worker_cert, pki.worker_key, pki.ca_cert, tmp_path, name="w")
    context = gateway_ssl(pki)
    worker.wait_until(lambda: httpx.get(f"{worker_url}/health", verify=context, timeout=1).status_code == 200)
    gateway, url = start_gateway(
        tmp_path,
        issuers=[issuer.settings()],
        policy_dir=policy_dir,
        upstreams=[upstream(pki, "fake", ["fake-model"], [worker_url])],
    )
    token = issuer.mint(groups=["ml-engineers"])
    try:
        first_version = readyz_policy(url)["version"]

        async def load(stop: asyncio.Event) -> tuple[list[int], set[int]]:
            statuses: list[int] = []
            caps: set[int] = set()
            async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=10) as client:

                async def one_client() -> None:
                    while not stop.is_set():
                        response = await client.post(f"{url}/v1/chat/completions", json=CHAT)
                        statuses.append(response.status_code)
                        if response.status_code == 200:
                            caps.add(response.json()["echo"]["body"]["max_tokens"])

                await asyncio.gather(*(one_client() for _ in range(6)))
            return statuses, caps

        async def main() -> tuple[list[int], set[int], dict[str, object], dict[str, object]]:
            stop = asyncio.Event()
            traffic = asyncio.create_task(load(stop))
            await asyncio.sleep(0.3)
            replace_file(policy_file, POLICY.format(cap=128))
            await asyncio.to_thread(wait_for, lambda: readyz_policy(url)["version"] != first_version)
            await asyncio.sleep(0.3)
            replace_file(policy_file, POLICY.format(cap="not a number"))
            await asyncio.to_thread(wait_for, lambda: readyz_policy(url)["last_error"] is not None)
            broken = readyz_policy(url)
            await asyncio.sleep(0.3)
            replace_file(policy_file, POLICY.format(cap=64))
            await asyncio.to_thread(wait_for, lambda: readyz_policy(url)["last_error"] is None)
            await asyncio.sleep(0.3)
            stop.set()
            statuses, caps = await traffic
            return statuses, caps, broken, readyz_policy(url)

        statuses, caps, broken, recovered = asyncio.run(main())
        scraped = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
            if line and not line.startswith("#")
        }
    finally:
        gateway.stop()
        worker.stop()
    assert len(statuses) > 50 and set(statuses) == {200}
    assert caps == {256, 128, 64}  # each good version served; the broken one never did
    assert "main.yaml line 10" in str(broken["last_error"]) and "max_tokens" in str(broken["last_error"])
    assert int(str(broken["reloads_failed"])) >= 1
    assert recovered["last_error"] is None
    assert scraped['warden_gateway_policy_reloads_total{result="failed"}'] >= 1
    assert scraped["warden_gateway_policy_last_reload_failed"] == 0
    assert scraped[f'warden_gateway_policy_info{{version="{recovered["version"]}"}}'] == 1


def test_sighup_reloads_at_once(pki: PkiPaths, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path / "idp")
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "main.yaml"
    policy_file.write_text(POLICY.format(cap=256))
    gateway, url = start_gateway(
        tmp_path, issuers=[issuer.settings()], policy_dir=policy_dir, upstreams=[],
        policy_reload_interval_s=3600,
    )  # fmt: skip
    try:
        before = readyz_policy(url)["version"]
        replace_file(policy_file, POLICY.format(cap=128))
        time.sleep(0.3)
        assert readyz_policy(url)["version"] == before  # no polling within the hour
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: readyz_policy(url)["version"] != before, 5)
    finally:
        gateway.stop()
