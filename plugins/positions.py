"""Built-in position kinds: `learned` (a table, with an offset), `rotary` (q and k rotated inside
attention, cos/sin from the model's rotary module) and `none`."""

from __future__ import annotations

from bridge_core.kinds import PositionKind
from bridge_core.plugin_host import hookimpl


@hookimpl
def bridge_core_position_kinds() -> list[PositionKind]:
    return [
        PositionKind("learned", limits_length=True, has_table=True),
        PositionKind("rotary", limits_length=False, has_table=False, rotates_qk=True),
        PositionKind("none", limits_length=False, has_table=False),
    ]
