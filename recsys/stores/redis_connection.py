"""How the request path's Redis clients connect: the first command is the first round trip."""
from __future__ import annotations

from typing import Any, Final

# redis-py 8 opens a connection with HELLO 3, CLIENT MAINT_NOTIFICATIONS and two CLIENT SETINFO
# before the first command: four round trips, all inside the call's timeout. A call that times
# out drops its connection, so the next one connects again; once a round trip takes more than a
# quarter of the timeout no new connection gets through, and a slow Redis turns into an outage
# that lasts as long as the slowness. RESP2 and no client metadata: one round trip per call,
# fresh connection or not (the benchmarks' chaos suite, redis-latency fault).
ONE_ROUND_TRIP: Final[dict[str, Any]] = {"protocol": 2, "driver_info": None}
