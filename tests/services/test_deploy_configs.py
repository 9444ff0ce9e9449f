"""deploy/: every Serve config (the two YAML files and the one inside the KubeRay manifest) is
valid for Ray Serve's own schema, its ``args`` are a valid ServiceConfig, and every deployment it
overrides is one the application really builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _serve_configs() -> dict[str, dict]:
    configs = {p.name: yaml.safe_load(p.read_text()) for p in sorted(DEPLOY.glob("serve-*.yaml"))}
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay-rayservice.yaml").read_text()))
    services = [d for d in docs if d and d.get("kind") == "RayService"]
    assert len(services) == 1, "the KubeRay manifest holds one RayService"
    configs["kuberay-rayservice.yaml"] = yaml.safe_load(services[0]["spec"]["serveConfigV2"])
    return configs


CONFIGS = _serve_configs()


def test_there_is_a_local_and_a_gpu_cluster_config():
    assert {"serve-local.yaml", "serve-gpu-cluster.yaml", "kuberay-rayservice.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_serve_config_matches_serve_schema_and_app(name):
    from ray.serve.schema import ServeDeploySchema

    from ragpress.services.app import ENCODER_DEPLOYMENT, ServiceConfig, compressor_deployment_name

    schema = ServeDeploySchema.model_validate(CONFIGS[name]) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(CONFIGS[name])
    assert len(schema.applications) == 1
    app = schema.applications[0]
    assert app.import_path == "ragpress.services.app:app_builder"
    service = ServiceConfig.model_validate(app.args)  # unknown methods / fields raise here
    built = {"Ingress", "Retriever"} | {compressor_deployment_name(c.method) for c in service.compressors}
    built |= {"Reader"} if service.reader is not None else set()
    built |= {ENCODER_DEPLOYMENT} if service.encoder is not None else set()
    overridden = {d.name for d in app.deployments}
    assert overridden <= built, f"{name} overrides deployments the app does not build: {overridden - built}"


def test_local_config_fits_a_two_core_machine():
    app = CONFIGS["serve-local.yaml"]["applications"][0]
    for d in app["deployments"]:
        assert d["ray_actor_options"]["num_cpus"] <= 0.5, d["name"]
        assert "num_gpus" not in d["ray_actor_options"]
    # every deployment the app builds is listed, and all of them together fit in 2 CPUs
    assert {"Encoder", "Reader", "Ingress", "Retriever"} <= {d["name"] for d in app["deployments"]}
    assert sum(d["ray_actor_options"]["num_cpus"] * d["num_replicas"] for d in app["deployments"]) <= 2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_serves_arc_from_its_own_encoder_deployment(name):
    """Soft tokens come from the Encoder deployment (own replicas and GPU share), not a compressor."""
    from ragpress.services.app import ServiceConfig

    app = CONFIGS[name]["applications"][0]
    service = ServiceConfig.model_validate(app["args"])
    assert service.encoder is not None and service.encoder.method == "arc"
    assert "arc" not in [c.method for c in service.compressors]
    encoder = {d["name"]: d for d in app["deployments"]}["Encoder"]
    if name != "serve-local.yaml":
        assert encoder["ray_actor_options"]["num_gpus"] > 0 and "autoscaling_config" in encoder


def test_soft_token_methods_go_to_the_encoder_stage():
    from ragpress.services.app import ServiceConfig

    with pytest.raises(ValueError, match="encoder"):
        ServiceConfig.model_validate({"compressors": [{"method": "arc"}]})
    with pytest.raises(ValueError, match="compressors"):
        ServiceConfig.model_validate({"encoder": {"method": "truncate"}})
    split = ServiceConfig.for_methods(["arc", "truncate"])
    assert split.encoder.method == "arc" and [c.method for c in split.compressors] == ["truncate"]
    assert ServiceConfig(compressors=[], encoder={"method": "arc"}).encoder is not None
    with pytest.raises(ValueError, match="at least one"):
        ServiceConfig(compressors=[])


def test_gpu_config_gives_model_stages_gpus_and_autoscaling():
    app = CONFIGS["serve-gpu-cluster.yaml"]["applications"][0]
    by_name = {d["name"]: d for d in app["deployments"]}
    assert by_name["Retriever"]["ray_actor_options"]["num_gpus"] > 0
    model_stages = [n for n in by_name if n.startswith("Compressor-") and n != "Compressor-truncate"]
    assert model_stages
    for n in model_stages:
        assert by_name[n]["ray_actor_options"]["num_gpus"] > 0 and "autoscaling_config" in by_name[n]
    assert app["args"]["cache"]["url_env"] == "RAGPRESS_REDIS_URL"  # Redis, its URL (with password) from the env


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_has_a_reader_section(name):
    from ragpress.services.app import ServiceConfig

    app = CONFIGS[name]["applications"][0]
    assert app["args"]["reader"]["name"] in ("local", "openai")
    assert ServiceConfig.model_validate(app["args"]).reader is not None
    reader = {d["name"]: d for d in app["deployments"]}["Reader"]
    assert reader["user_config"]["max_batch_size"] >= 1 and reader["user_config"]["batch_wait_timeout_s"] > 0
    if name != "serve-local.yaml":  # the GPU configs give the reader a GPU share and autoscaling
        assert reader["ray_actor_options"]["num_gpus"] > 0 and "autoscaling_config" in reader


def test_reader_config_defaults_and_null():
    from ragpress.core.errors import UnknownReaderError
    from ragpress.services.app import ServiceConfig

    assert ServiceConfig().reader.name == "local"
    assert ServiceConfig(reader=None).reader is None
    with pytest.raises(UnknownReaderError):
        ServiceConfig.model_validate({"reader": {"name": "nope"}})


def test_a_broken_config_is_rejected_by_the_schema():
    from ray.serve.schema import ServeDeploySchema

    bad = {"applications": [{"name": "x", "import_path": "ragpress.services.app:app_builder",
                             "deployments": [{"name": "Ingress", "num_replicas": -2}]}]}
    with pytest.raises(ValueError):  # pydantic ValidationError
        ServeDeploySchema.model_validate(bad) if hasattr(ServeDeploySchema, "model_validate") \
            else ServeDeploySchema.parse_obj(bad)


# ---------------------------------------------------------------------------- production access (#14)
def _kuberay_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kuberay-rayservice.yaml").read_text()) if d]


def _pod_specs() -> dict[str, dict]:
    """Every Ray pod template of the RayService (head + worker groups), by name."""
    cluster = next(d for d in _kuberay_docs() if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return pods


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_shows_auth_key_prefix_and_a_drain_period(name):
    from ragpress.services.app import ServiceConfig

    app = CONFIGS[name]["applications"][0]
    service = ServiceConfig.model_validate(app["args"])
    assert service.cache.key_prefix, "a key prefix keeps deployments apart on a shared Redis"
    assert "auth" in app["args"] and (service.auth.keys or service.auth.keys_env)
    ingress = {d["name"]: d for d in app["deployments"]}["Ingress"]
    assert ingress["graceful_shutdown_timeout_s"] >= 10


@pytest.mark.parametrize("name", ["serve-gpu-cluster.yaml", "kuberay-rayservice.yaml"])
def test_cluster_configs_keep_secrets_in_the_environment(name):
    from ragpress.services.app import ServiceConfig
    from ragpress.services.auth import KeyStore

    args = CONFIGS[name]["applications"][0]["args"]
    service = ServiceConfig.model_validate(args)
    assert service.cache.url is None and service.cache.url_env == "RAGPRESS_REDIS_URL"
    assert service.auth.protect_metrics and {"metrics"} in [set(k.scopes) for k in service.auth.keys]
    env_names = {k.key_env for k in service.auth.keys if k.key_env}
    assert env_names, "API keys come from the environment"
    store = KeyStore(service.auth, environ={n: f"value-of-{n}" for n in env_names})  # what a replica builds
    assert store.enabled and store.check(f"Bearer value-of-{sorted(env_names)[0]}", "/healthz") is None


def test_kuberay_takes_every_secret_from_kubernetes_secrets():
    text = (DEPLOY / "kuberay-rayservice.yaml").read_text()
    serve_args = CONFIGS["kuberay-rayservice.yaml"]["applications"][0]["args"]
    wanted = {serve_args["cache"]["url_env"]} | {k["key_env"] for k in serve_args["auth"]["keys"] if "key_env" in k}
    for pod, spec in _pod_specs().items():  # a replica may run on any Ray pod: each has every variable
        assert spec["terminationGracePeriodSeconds"] > 60, pod
        for container in spec["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert wanted <= set(env), (pod, wanted - set(env))
            for n in wanted - {"RAGPRESS_REDIS_URL"}:
                assert env[n]["valueFrom"]["secretKeyRef"]["name"] == "ragpress-secrets"
            assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "ragpress-secrets"
            url = env["RAGPRESS_REDIS_URL"]["value"]
            assert url.startswith("rediss://:$(REDIS_PASSWORD)@") and "ssl_ca_certs=" in url
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert url.split("ssl_ca_certs=")[1].rsplit("/", 1)[0] in mounts
    redis = next(d for d in _kuberay_docs() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    args = redis["containers"][0]["args"]
    assert "--requirepass" in args and "--tls-port" in args and args[args.index("--port") + 1] == "0"
    assert redis["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "ragpress-secrets"
    assert "redis://" not in text.replace("rediss://", "")  # no plain-text Redis URL left


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_bounds_each_stage_queue_and_the_ingress(name):
    """Overload is shed, not queued: every stage names its queue bound, the ingress its
    in-flight bound (under its own max_ongoing_requests where that is set)."""
    (app,) = CONFIGS[name]["applications"]
    for d in app["deployments"]:
        if d["name"] != "Ingress":
            assert isinstance(d.get("max_queued_requests"), int) and d["max_queued_requests"] > 0, (name, d["name"])
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    limit = app["args"]["limits"]["max_in_flight"]
    assert limit < ingress.get("max_ongoing_requests", 5 * 2**10), (name, limit)
