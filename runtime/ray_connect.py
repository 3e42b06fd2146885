"""Joining a Ray cluster, or starting a local one, with refusals that say why and how to fix them.

Two seams of ``ray.init`` that this module closes for ``iqa-run --ray``:

- ``ray.init()`` without an address joins the cluster recorded in ``/tmp/ray/ray_current_cluster``
  (the last ``ray start``) even when that cluster is gone. Here no address means ``RAY_ADDRESS``
  when set, else a new local instance (``address="local"``); ``auto`` still asks for the recorded one.
- A cluster that refuses the client (token authentication, another Ray or Python version) and
  one that is not there all surface as ``ConnectionError: Failed to connect to Ray cluster``,
  with the reason only in Ray's C++ log lines. A ``host:port`` address is checked first: a TCP
  connection (is anything there?), then one call of Ray's own GCS client (does it accept us?).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from qualitynet.errors import QualityNetError

__all__ = ["connect", "resolve_address"]

logger = logging.getLogger(__name__)

_TOKEN_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"
_PROBE_TIMEOUT_S = 5.0


def resolve_address(address: str | None) -> str:
    """The address to give ``ray.init``: ``address``, else ``RAY_ADDRESS``, else ``"local"`` (a new instance)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _authentication_refused(address: str, said: object) -> QualityNetError:
    return QualityNetError(
        f"the Ray cluster at {address} refused this client's authentication (Ray said: {said}). The cluster uses "
        "token authentication: give this process the cluster's token, as RAY_AUTH_MODE=token plus "
        "RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file>, or in ~/.ray/auth_token (`ray get-auth-token` on "
        f"the head prints it); see {_TOKEN_DOCS}"
    )


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """Refuse, with the reason, a ``host:port`` that nothing listens on or whose GCS refuses us."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise QualityNetError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}. Check the head's address and port "
            "(`ray status` on the head), that it runs, and that no firewall is in between"
        ) from None
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # private: used only as a probe
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        GcsClient(address=address).internal_kv_get(b"qualitynet-probe", None, timeout=_PROBE_TIMEOUT_S)
    except AuthenticationError as exc:
        raise _authentication_refused(address, exc) from None
    except Exception as exc:  # noqa: BLE001 - anything else is ray.init's to report
        logger.debug("Ray GCS probe of %s: %s", address, exc)


def _refusal(address: str, exc: Exception) -> QualityNetError:
    said = " ".join(str(exc).split())
    if said.startswith("Version mismatch"):
        return QualityNetError(
            f"the Ray cluster at {address} runs another Ray or Python version than this process ({said}); run "
            "iqa-run with the cluster's versions (pip install 'ray[data]==<its version>' in a venv of its Python)"
        )
    return QualityNetError(f"cannot reach the Ray cluster at {address}: {said}")


def connect(ray: Any, address: str | None, **init_options: Any) -> bool:
    """Join the cluster at ``address`` (see :func:`resolve_address`) unless Ray is already initialised.

    Args:
        ray: the imported ``ray`` module.
        address: ``host:port``, ``ray://host:10001``, ``auto`` (the last ``ray start`` here),
            ``local``, or None.
        init_options: passed to ``ray.init``.

    Returns:
        Whether this call started the session (the caller then shuts it down).

    Raises:
        QualityNetError: the cluster is unreachable or refuses this client; the message says
            which (authentication, version mismatch, nothing listening) and how to fix it.
    """
    if ray.is_initialized():
        return False
    target = resolve_address(address)
    if target not in ("local", "auto"):
        _check_reachable(target)
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=target, **init_options)
    except AuthenticationError as exc:
        raise _authentication_refused(target, exc) from None
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise _refusal(target, exc) from None
    return True
