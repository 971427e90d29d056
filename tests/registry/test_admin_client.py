"""Where the CLI and the notebooks find the admin token, and what they say without one. (Calls
through a real service: tests/e2e/test_canary_release.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from registry.admin_client import AdminClient, AdminError, configured_token


def test_the_environment_comes_before_the_token_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN", raising=False)
    assert configured_token() == "from-file"
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "from-env")
    assert configured_token() == "from-env"


def test_no_token_anywhere_says_where_to_put_one(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN_FILE", str(tmp_path / "none"))
    with pytest.raises(AdminError, match="set RECSYS_ADMIN_TOKEN, or RECSYS_ADMIN_TOKEN_FILE"):
        AdminClient("http://127.0.0.1:3000")


def test_an_unreachable_service_is_named() -> None:
    from devtools.local_redis import free_port

    admin = AdminClient(f"http://127.0.0.1:{free_port()}", token="t", timeout_s=2)
    with pytest.raises(AdminError, match=r"/admin/canary: ConnectError"):
        admin.canary("status")
