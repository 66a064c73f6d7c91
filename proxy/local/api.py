"""``GET /turnout/hardware``: the machine survey `turnout doctor --json` prints — GPUs and memory,
the Ollama backends' installed and loaded models with their sizes, what ``model: auto`` targets
would choose, and the recommendations.

Who may ask: anyone when no keys are configured (as every other endpoint); otherwise a valid key,
and, when some key has ``tier: admin``, only such keys (the config has no other notion of an
administrator yet). ``?reserve=GB`` overrides the memory kept for other work. The survey runs GPU
tools and asks Ollama with bounded timeouts, in a worker thread so the event loop never waits.
"""

from __future__ import annotations

import asyncio
import math

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.config import Config
from proxy.errors import InvalidRequest, ProxyError
from proxy.local.autoconfig import survey
from proxy.web.auth import Authenticator
from proxy.web.responses import json_response

ADMIN_TIER = "admin"


class HardwareForbidden(ProxyError):
    status = 403
    type = "permission_error"
    code = "admin_key_required"


def routes(cfg: Config, auth: Authenticator) -> list[Route]:
    async def hardware(request: Request) -> Response:
        key = auth.authenticate(request.headers)
        if key is not None and any(k.tier == ADMIN_TIER for k in cfg.keys) and key.tier != ADMIN_TIER:
            raise HardwareForbidden("GET /turnout/hardware needs a key with tier: admin.")
        reserve = request.query_params.get("reserve")
        reserve_gb = None
        if reserve is not None:
            try:
                reserve_gb = float(reserve)
            except ValueError:
                reserve_gb = -1.0
            if not math.isfinite(reserve_gb) or reserve_gb < 0:
                raise InvalidRequest(f"reserve: expected a number of GB >= 0, got {reserve!r}", param="reserve")
        return json_response(await asyncio.to_thread(lambda: survey(cfg, reserve_gb).to_json()))

    return [Route("/turnout/hardware", hardware, methods=["GET"])]
