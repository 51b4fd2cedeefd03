"""Settings: one typed, frozen object from an optional TOML file and ``RELAY_*`` variables.

Precedence, highest first: environment variables, the TOML file, the defaults below. The
defaults are the embedded ones: memory store, local engine, loopback only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_", frozen=True, extra="forbid")

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8780, ge=0, le=65535)
    ws_host: str = "127.0.0.1"
    ws_port: int = Field(default=8765, ge=0, le=65535)
    public_url: str = ""  # base URL the cloud uses for callbacks; default: http://HTTP_HOST:PORT
    public_ws_url: str = ""  # base URL viewers connect to; default: ws://WS_HOST:PORT
    store: Literal["memory"] = "memory"  # "redis" arrives with the Redis store
    redis_url: str = "redis://127.0.0.1:6379/0"
    control_token: SecretStr | None = None
    default_engine: Literal["local", "aliyun"] = "local"

    aliyun_auth_key: SecretStr | None = None
    aliyun_access_key_id: str = ""
    aliyun_access_key_secret: SecretStr | None = None
    aliyun_region: str = "cn-shanghai"
    aliyun_endpoint: str = ""  # "" = the SDK's; "host:port" (HTTPS) or "http://host:port"
    aliyun_signature: Literal["acs3", "v2"] = "acs3"  # ACS3-HMAC-SHA256 or v2 HMAC-SHA1
    aliyun_timeout_s: float = Field(default=5, gt=0, le=60)  # per cloud API call
    aliyun_rate_per_s: float = Field(default=15, gt=0, le=20)  # the API allows 20/s
    aliyun_stop_grace_s: float = Field(default=5, ge=0, le=60)  # callbacks after a stop
    # On shutdown: stop the cloud tasks relay created, or keep them running for the next
    # start to resume from the store (useful with a persistent store).
    aliyun_on_shutdown: Literal["stop", "keep"] = "stop"

    sig_max_skew_s: float = Field(default=300, gt=0)
    callback_max_bytes: int = Field(default=64 * 1024, gt=0)
    # No result for this long marks a task interrupted. Speakers pause, and the cloud sends
    # nothing while nobody speaks, so this is generous by default.
    interrupt_after_s: float = Field(default=15, gt=0)
    caption_log_max: int = Field(default=2000, ge=1000)
    viewer_max_pending_bytes: int = Field(default=1024 * 1024, gt=0)
    viewer_secret: SecretStr | None = None
    max_viewers: int = Field(default=20000, ge=1)  # per instance; more get 503 at the handshake
    local_model: str = ""  # empty: the packaged Whisper tiny.en
    rtmp_url: str = "rtmp://127.0.0.1:1935"  # where nginx-rtmp serves streams that hooks start
    hook_terminate_s: float = Field(default=5, ge=1, le=10)  # hook-started tasks auto-terminate
    hook_hold_s: float = Field(default=0.75, ge=0, le=5)  # on_publish answers after this long
    local_preload: bool = True  # load the model at start (/readyz waits for it), not on first use
    ffmpeg: str = ""  # empty: the binary of the imageio-ffmpeg package
    local_step_s: float = Field(default=0.5, ge=0.1, le=5)
    local_cpu_threads: int = Field(default=2, ge=1, le=64)
    local_reconnect_s: float = Field(default=10, gt=0)  # retry a lost network source this long

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_timeout_s: float = Field(default=10, gt=0)

    @field_validator("public_url", "public_ws_url", "rtmp_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file is named by `model_config["toml_file"]`, which load() sets.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` win over everything (tests use them)."""
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})
    with_file = type("Settings", (Settings,), {"model_config": config})
    settings: Settings = with_file(**overrides)
    return settings


@dataclass(slots=True)
class PublicUrls:
    """Base URLs others use to reach relay: the cloud (callbacks), viewers, overlays.

    Derived from the listen addresses unless RELAY_PUBLIC_URL / RELAY_PUBLIC_WS_URL are set;
    :meth:`bound` fills in the real ports once the servers listen (port 0 picks one).
    """

    http: str
    ws: str

    @classmethod
    def from_settings(cls, settings: Settings) -> PublicUrls:
        return cls(
            settings.public_url or f"http://{_url_host(settings.http_host)}:{settings.http_port}",
            settings.public_ws_url or f"ws://{_url_host(settings.ws_host)}:{settings.ws_port}",
        )

    def bound(self, settings: Settings, http_port: int, ws_port: int) -> None:
        if not settings.public_url:
            self.http = f"http://{_url_host(settings.http_host)}:{http_port}"
        if not settings.public_ws_url:
            self.ws = f"ws://{_url_host(settings.ws_host)}:{ws_port}"


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets replaced by ``***``."""
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "***" if value.get_secret_value() else ""
        out[name] = value
    return out


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - a bind address, turned into a reachable one
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
