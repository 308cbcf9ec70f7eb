"""Container health check without curl: exit 0 when the URL answers 200, else 1.

    python healthcheck.py [URL]

URL defaults to ``http://127.0.0.1:$R3_PORT/readyz`` (R3_PORT defaults to 8000).
Standard library only, so it runs in the slim runtime image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('R3_PORT') or '8000'}/readyz"


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code} {exc.read(300).decode('utf-8', 'replace')}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ok, message = check(args[0] if args else default_url())
    print(message, file=sys.stdout if ok else sys.stderr)  # noqa: T201 - docker inspect shows it
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
