"""The service's admin endpoints (POST /admin/canary, /admin/rollback) for the CLI and the
notebooks. The token: RECSYS_ADMIN_TOKEN, as the service reads it, else the file
RECSYS_ADMIN_TOKEN_FILE names (default .run/admin-token of the project, where the main command
keeps the one it made)."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from recsys.errors import RecsysError

ENDED = ("promoted", "rolled_back", "aborted")
DEFAULT_TOKEN_FILE = Path(__file__).resolve().parent.parent / ".run" / "admin-token"


def configured_token() -> str | None:
    token = os.environ.get("RECSYS_ADMIN_TOKEN")
    if token:
        return token
    path = Path(os.environ.get("RECSYS_ADMIN_TOKEN_FILE", DEFAULT_TOKEN_FILE))
    return path.read_text().strip() if path.is_file() else None


class AdminError(RecsysError):
    """The service refused an admin command or could not be reached; the message says which."""


class AdminClient:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        token = token if token is not None else configured_token()
        if not token:
            raise AdminError("the admin endpoints need the service's token: set "
                             "RECSYS_ADMIN_TOKEN, or RECSYS_ADMIN_TOKEN_FILE to a file holding it "
                             f"(the main command keeps one in {DEFAULT_TOKEN_FILE})")
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token}"})

    def canary(self, action: str, *, stages: list[float] | None = None,
               guards: dict[str, float] | None = None, verdicts: int = 0) -> dict[str, Any]:
        """start, status, pause, resume, abort or promote; the canary's state afterwards."""
        body: dict[str, Any] = {"action": action, "verdicts": verdicts}
        if stages:
            body["stages"] = stages
        if guards:
            body["guards"] = guards
        return self._post("/admin/canary", body)

    def rollback(self) -> dict[str, str]:
        """The previous champion back on live traffic; its model tags."""
        return dict(self._post("/admin/rollback", {})["champion"])

    def watch(self, *, timeout_s: float, every_s: float = 2.0,
              on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the canary until it ends (or `timeout_s`); its last status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.canary("status", verdicts=1)
            if on_status is not None:
                on_status(status)
            canary = status["canary"]
            if canary is None or canary["status"] in ENDED or time.monotonic() > deadline:
                return status
            time.sleep(every_s)

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(path, json=body)
        except httpx.HTTPError as error:
            raise AdminError(f"{self.url}{path}: {error!r}") from error
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise AdminError(f"{self.url}{path} answered {response.status_code}: {message}")
        return dict(response.json())
