"""A client run inside the drill's client network namespace (``ip netns exec``).

``python -m tests.drills.netns_client <proxy_url> put|check <container> <count>``: PUTs
deterministic objects, or checks every one GETs its exact bytes and is listed. Prints a
JSON report; exits non-zero on any problem.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

import aiohttp


def payload(name: str) -> bytes:
    return random.Random(name).randbytes(3000)


async def main(proxy: str, action: str, container: str, count: int) -> int:
    names = [f"ns-{i:03d}" for i in range(count)]
    problems: list[str] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy}/auth/v1.0", headers={
                "X-Auth-User": "test:tester", "X-Auth-Key": "testing"}) as resp:
            token, url = resp.headers["X-Auth-Token"], resp.headers["X-Storage-Url"]
        headers = {"X-Auth-Token": token}
        if action == "put":
            async with session.put(f"{url}/{container}", headers=headers) as resp:
                if resp.status not in (201, 202):
                    problems.append(f"container PUT {resp.status}")
            for name in names:
                async with session.put(f"{url}/{container}/{name}", data=payload(name),
                                       headers=headers) as resp:
                    if resp.status != 201:
                        problems.append(f"{name}: PUT {resp.status}")
        else:
            for name in names:
                async with session.get(f"{url}/{container}/{name}", headers=headers) as resp:
                    if resp.status != 200 or await resp.read() != payload(name):
                        problems.append(f"{name}: GET {resp.status}")
            async with session.get(f"{url}/{container}?format=json", headers=headers) as resp:
                listed = {row["name"] for row in await resp.json()}
            if listed != set(names):
                problems.append(f"listing differs: {sorted(listed ^ set(names))[:5]}")
    print(json.dumps({"problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
