"""`relay emulate aliyun-live`: Alibaba Cloud Live real-time ASR (CreateRtcAsrTask family).

See docs/emulator-aliyun-live.md. Pure cores: :mod:`.tasks` (validation, state table),
:mod:`.report` (ReportInterval), :mod:`.faults` (fault plan), :mod:`.nls` (callback bodies),
:mod:`.ratelimit`; asyncio around them: :mod:`.delivery`, :mod:`.runner`, :mod:`.emulator`,
:mod:`.server`.
"""

from relay.emulators.aliyun_live.delivery import DeliveryConfig
from relay.emulators.aliyun_live.emulator import (
    DEV_ACCESS_KEY_ID,
    DEV_ACCESS_KEY_SECRET,
    AliyunLiveEmulator,
    EmulatorConfig,
    Refusal,
)
from relay.emulators.aliyun_live.faults import Faults

__all__ = [
    "DEV_ACCESS_KEY_ID",
    "DEV_ACCESS_KEY_SECRET",
    "AliyunLiveEmulator",
    "DeliveryConfig",
    "EmulatorConfig",
    "Faults",
    "Refusal",
]
