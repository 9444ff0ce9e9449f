"""`ragpress serve` configuration: Serve config files map onto the stages, CLI overrides win,
bad input is a typed error (the real start is exercised by `ragpress serve --smoke`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ragpress.core.errors import ConfigError, UnknownCompressorError
from ragpress.services.serve_cli import _with_overrides, add_serve_parser, load_service_config, run_serve

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_serve_local_yaml_maps_deployment_options_onto_stages():
    config, http = load_service_config(DEPLOY / "serve-local.yaml")
    assert http["port"] == 8000 and http["host"] == "127.0.0.1"
    stages = {c.method: c for c in config.compressors}
    emb = stages["exit"].deployment
    assert emb["ray_actor_options"]["num_cpus"] == 0.5 and emb["user_config"]["max_batch_size"] == 8
    assert config.ingress["max_ongoing_requests"] == 256
    assert config.retriever.deployment["num_replicas"] == 1


def test_defaults_and_overrides(tmp_path):
    config, http = load_service_config(None)
    assert http == {} and config.cache.url is None and config.retriever.index_path is None
    out = _with_overrides(config, ["truncate"], "redis://127.0.0.1:6399/0", None)
    assert [c.method for c in out.compressors] == ["truncate"] and out.cache.url.endswith(":6399/0")
    with pytest.raises(ConfigError, match="meta.json"):
        _with_overrides(config, None, None, str(tmp_path))


def test_bad_configs_are_typed_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_service_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - name: r\n    import_path: ragpress.services.app:app_builder\n"
                   "    deployments: [{name: Compressor-nope, num_replicas: 2}]\n")
    with pytest.raises(ConfigError, match="Compressor-nope"):
        load_service_config(bad)
    bad.write_text("compressors: [{method: not-a-method}]\n")
    with pytest.raises(UnknownCompressorError, match="not-a-method"):
        load_service_config(bad)


def test_unknown_method_on_the_command_line_exits_2(capsys):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    assert run_serve(parser.parse_args(["serve", "--methods", "nope", "--smoke"])) == 2
    assert "nope" in capsys.readouterr().err
