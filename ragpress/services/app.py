"""The Ray Serve application, built from a :class:`ServiceConfig`.

    Ingress (FastAPI) --> Retriever (FAISS + embedder)
                     \\-> Compressor-<method>  (one deployment per configured text method)
                     \\-> Encoder             (a soft-token method, arc: its own replicas and GPU share)
                     \\-> Reader              (local causal LM or an OpenAI-compatible upstream)

Each stage's Serve options (``num_replicas``, ``autoscaling_config``, ``max_ongoing_requests``,
``ray_actor_options`` with ``num_cpus``/``num_gpus``, ``user_config``) come from the config, and
a Serve config YAML can override them per deployment name (``Ingress``, ``Retriever``,
``Compressor-<method>``, ``Encoder``, ``Reader``); see ``deploy/``.

>>> from ray import serve                                              # doctest: +SKIP
>>> serve.run(build_app(ServiceConfig()), route_prefix="/")            # doctest: +SKIP

In a Serve config file: ``import_path: ragpress.services.app:app_builder`` with the
:class:`ServiceConfig` fields under ``args``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragpress.services.api import ServiceLimits
from ragpress.services.auth import AuthSettings, RateLimitStore

DEFAULT_METHODS = ("exit", "truncate")


class _Conf(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompressorStage(_Conf):
    """One text compression method served as its own deployment."""

    method: str
    config: dict[str, Any] = Field(default_factory=dict, description="the method's config (live via user_config)")
    deployment: dict[str, Any] = Field(default_factory=dict, description="Serve deployment options")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        from ragpress.core.registry import get_compressor_class

        if get_compressor_class(v).soft_tokens:  # (raises UnknownCompressorError listing the methods)
            raise ValueError(f"{v!r} makes soft tokens: configure it as the `encoder` stage, not a compressor")
        return v


class EncoderStage(_Conf):
    """A soft-token method (``arc``) served as the ``Encoder`` deployment, with its own replicas
    and GPU share (``deployment.ray_actor_options.num_gpus``); requests for it are routed there."""

    method: str = "arc"
    config: dict[str, Any] = Field(default_factory=dict, description="the method's config (live via user_config)")
    deployment: dict[str, Any] = Field(default_factory=dict, description="Serve deployment options")

    @field_validator("method")
    @classmethod
    def _soft(cls, v: str) -> str:
        from ragpress.core.registry import get_compressor_class

        if not get_compressor_class(v).soft_tokens:
            raise ValueError(f"{v!r} returns text: configure it under `compressors`; the encoder serves soft-token "
                             "methods (arc)")
        return v


class RetrieverStage(_Conf):
    index_path: str | None = Field(default=None, description="a saved VectorIndex; None = the shipped sample index")
    deployment: dict[str, Any] = Field(default_factory=dict)


class ReaderStage(_Conf):
    """The reader that answers ``/v1/answer`` and ``/v1/chat/completions``: ``local`` (a causal LM
    in the replica; offline default SmolLM2-135M-Instruct) or ``openai`` (an upstream server)."""

    name: str = Field(default="local", description="reader name: local | openai")
    config: dict[str, Any] = Field(default_factory=dict, description="the reader's config (ragpress.readers)")
    deployment: dict[str, Any] = Field(default_factory=dict, description="Serve deployment options")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from ragpress.readers import get_reader_class

        get_reader_class(v)  # UnknownReaderError listing the readers, or PluginError saying what is broken
        return v


class CacheSettings(_Conf):
    """Segment cache: ``url`` None = in process; ``redis://host:port/db`` = Redis (password and
    TLS in the URL: ``rediss://:PASSWORD@host:6380/0``); ``url_env`` reads the URL from an
    environment variable instead (a Kubernetes secret); ``key_prefix`` keeps this deployment's
    entries apart on a shared Redis."""

    url: str | None = None
    url_env: str | None = Field(default=None, description="environment variable holding the URL (wins over url)")
    key_prefix: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$",
                            description="prefix of every Redis key of this deployment, e.g. 'prod:'")
    ttl_s: float | None = 24 * 3600
    max_bytes: int = Field(default=256 * 2**20, description="in-process bound")
    max_memory: str | None = Field(default=None, description="Redis maxmemory to set (allkeys-lru), e.g. 512mb")
    retry_after_s: float = 1.0


class ServiceConfig(_Conf):
    """Everything the application builder needs; the defaults are the embedded ones
    (sample index, in-process cache, two cheap methods)."""

    compressors: list[CompressorStage] = Field(
        default_factory=lambda: [CompressorStage(method=m) for m in DEFAULT_METHODS])
    encoder: EncoderStage | None = Field(default=None, description="the soft-token method's stage (arc); "
                                         "null = none")
    retriever: RetrieverStage | None = Field(default_factory=RetrieverStage)
    reader: ReaderStage | None = Field(default_factory=ReaderStage,
                                       description="null = no reader (answers are null, no chat completions)")
    cache: CacheSettings = Field(default_factory=CacheSettings)
    limits: ServiceLimits = Field(default_factory=ServiceLimits)
    auth: AuthSettings = Field(default_factory=AuthSettings,
                               description="API keys, scopes, per-key rate and in-flight limits (off without keys; "
                                           "the limits are counted in the cache's Redis when there is one)")
    ingress: dict[str, Any] = Field(default_factory=dict, description="Serve options of the ingress")
    default_method: str | None = None
    default_top_k: int = Field(default=5, ge=1, le=100)
    warmup: bool = True

    @field_validator("compressors")
    @classmethod
    def _non_empty(cls, v: list[CompressorStage]) -> list[CompressorStage]:
        names = [c.method for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"each method may appear once; got {names}")
        return v

    @classmethod
    def for_methods(cls, methods: list[str], **kw: Any) -> ServiceConfig:
        """Text methods as compressors; a soft-token method (arc) as the encoder."""
        from ragpress.core.registry import get_compressor_class

        soft = [m for m in methods if get_compressor_class(m).soft_tokens]
        if len(soft) > 1:
            raise ValueError(f"one soft-token method per service; got {soft}")
        text = [m for m in methods if m not in soft]
        if soft:
            kw.setdefault("encoder", EncoderStage(method=soft[0]))
        return cls(compressors=[CompressorStage(method=m) for m in text], **kw)

    @model_validator(mode="after")
    def _some_method(self) -> ServiceConfig:
        if not self.compressors and self.encoder is None:
            raise ValueError("configure at least one compressor (or an encoder)")
        return self


    @classmethod
    def from_file(cls, path: str | Path) -> ServiceConfig:
        """Load YAML or JSON."""
        import yaml

        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


def compressor_deployment_name(method: str) -> str:
    return f"Compressor-{method}"


ENCODER_DEPLOYMENT = "Encoder"


def build_app(config: ServiceConfig | dict[str, Any] | None = None):
    """The bound Serve application for ``config``."""
    from ragpress.services.deployments import (
        CompressorDeployment,
        EncoderDeployment,
        Ingress,
        ReaderDeployment,
        RetrieverDeployment,
    )

    if not isinstance(config, ServiceConfig):
        config = ServiceConfig.model_validate(config or {})
    cache_kwargs = config.cache.model_dump()
    handles = {}
    for stage in config.compressors:
        options = {"name": compressor_deployment_name(stage.method), **stage.deployment}
        handles[stage.method] = CompressorDeployment.options(**options).bind(
            stage.method, stage.config, cache_kwargs, config.warmup)
    if config.encoder is not None:  # routed to like a compressor: by its method's name
        stage = config.encoder
        handles[stage.method] = EncoderDeployment.options(**{"name": ENCODER_DEPLOYMENT, **stage.deployment}).bind(
            stage.method, stage.config, cache_kwargs, config.warmup)
    retriever = None
    if config.retriever is not None:
        retriever = RetrieverDeployment.options(**config.retriever.deployment).bind(config.retriever.index_path)
    reader = None
    if config.reader is not None:
        reader = ReaderDeployment.options(**config.reader.deployment).bind(
            config.reader.name, config.reader.config, config.warmup)
    default = config.default_method or next(iter(handles))
    if default not in handles:
        raise ValueError(f"default_method {default!r} is not among the configured compressors {list(handles)}")
    auth = config.auth
    if auth.store is None:  # the per-key limits are shared by the ingress replicas in the segment cache's Redis
        c = config.cache
        auth = auth.model_copy(update={"store": RateLimitStore(url=c.url, url_env=c.url_env, key_prefix=c.key_prefix,
                                                               retry_after_s=c.retry_after_s)})
    settings = {"limits": config.limits.model_dump(), "default_method": default, "default_top_k": config.default_top_k,
                "auth": auth.model_dump(), "encoder": config.encoder.method if config.encoder else None}
    return Ingress.options(**config.ingress).bind(retriever, handles, settings, reader)


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files (``import_path: ragpress.services.app:app_builder``)."""
    return build_app(ServiceConfig.model_validate(args or {}))
