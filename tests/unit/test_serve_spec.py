"""DeploySpec validation and DeployInfo's repr (Ray-free)."""

from __future__ import annotations

import pytest

from lepton_lab.errors import LeptonUsageError
from lepton_lab.serve import DeployInfo, DeploySpec, deploy, predict, undeploy
from lepton_lab.serve._auth import generate_token
from lepton_lab.store import EndpointNotFound, ModelNotFound


def test_defaults_and_derived_settings():
    spec = DeploySpec(name="digits-api")
    assert (spec.replicas, spec.gpus, spec.max_batch, spec.batch_wait_ms, spec.autoscale,
            spec.cpus, spec.auth) == (1, 0.0, 32, 5.0, None, 1.0, True)
    assert spec.max_ongoing >= 2 * spec.max_batch
    assert DeploySpec(name="a", max_batch=1).max_ongoing >= 1
    d = DeploySpec(name="a", autoscale=[1, 3]).to_dict()
    assert d["autoscale"] == [1, 3] and d["name"] == "a"
    with pytest.raises(Exception):
        spec.replicas = 3                       # frozen


@pytest.mark.parametrize("kwargs,needle", [
    (dict(name="1bad"), "endpoint name"),
    (dict(name="has space"), "endpoint name"),
    (dict(name="a", replicas=0), "replicas"),
    (dict(name="a", replicas=1.5), "replicas"),
    (dict(name="a", replicas=True), "replicas"),
    (dict(name="a", gpus=-1), "gpus"),
    (dict(name="a", cpus="2"), "cpus"),
    (dict(name="a", cpus=0, gpus=0), "cpus > 0 or gpus > 0"),
    (dict(name="a", max_batch=0), "max_batch"),
    (dict(name="a", max_batch=10**6), "max_batch"),
    (dict(name="a", batch_wait_ms=-1), "batch_wait_ms"),
    (dict(name="a", autoscale=(3,)), "autoscale must be"),
    (dict(name="a", autoscale=5), "autoscale must be"),
    (dict(name="a", autoscale=(3, 1)), "above max"),
    (dict(name="a", autoscale=(0, 0)), "autoscale max"),
    (dict(name="a", autoscale=(1, 2), replicas=2), "not both"),
    (dict(name="a", auth="yes"), "auth"),
])
def test_bad_specs_are_one_line_usage_errors(kwargs, needle):
    with pytest.raises(LeptonUsageError) as info:
        DeploySpec(**kwargs)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_deploy_info_repr_masks_the_token():
    tok = generate_token()
    info = DeployInfo("digits-api", "digits:2", "http://127.0.0.1:8000/digits-api", tok,
                      tok[:8] + "…")
    for text in (repr(info), str(info), f"{info}", repr([info])):
        assert tok not in text and tok[8:20] not in text
        assert "lep_" in text and "digits-api" in text
    assert info.token == tok and info.predict_url.endswith("/digits-api/predict")


def test_unknown_model_and_endpoint_fail_before_touching_ray():
    with pytest.raises(ModelNotFound, match="no model 'nope'"):
        deploy("nope:1", DeploySpec(name="x"))
    with pytest.raises(LeptonUsageError, match="DeploySpec"):
        deploy("nope:1", {"name": "x"})
    with pytest.raises(EndpointNotFound):
        undeploy("never-deployed")
    with pytest.raises(EndpointNotFound):
        predict("never-deployed", [[1.0]])


def test_unreadable_or_changed_artifact_is_one_line(tmp_path):
    from lepton_lab.store import get_store

    store = get_store()
    store.register_model("gone", kind="trained", format="torch", path=str(tmp_path / "no.pt"),
                         sha256="0" * 64, size=1)
    with pytest.raises(LeptonUsageError, match=r"gone:1's file .* cannot be read"):
        deploy("gone", DeploySpec(name="x"))
    path = tmp_path / "m.pt"
    path.write_bytes(b"changed")
    store.register_model("edited", kind="trained", format="torch", path=str(path),
                         sha256="0" * 64, size=7)
    with pytest.raises(LeptonUsageError, match="changed since it was registered"):
        deploy("edited:1", DeploySpec(name="x"))
