"""The serve fault hook (`rayml.testing.serve_faults`): checked up front, scoped to its block, and the only way a
fault reaches a model replica (a private init argument, never the spec that Serve, KubeRay or `serve status` see)."""

from __future__ import annotations

import pytest

from rayml._private import faults
from rayml.errors import ConfigError
from rayml.serve._spec import AppSpec, VersionSpec
from rayml.serve.app import model_deployment
from rayml.testing import serve_faults
from tests.unit.serve_specs import app_spec


def _init_kwargs(spec: AppSpec) -> dict:
    m = spec.models["m"]
    return model_deployment(spec, m, m.versions[0])._bound_deployment._replica_config.init_kwargs


def test_a_fault_reaches_the_replica_only_inside_the_block_and_never_the_spec() -> None:
    spec = app_spec(m={3: 1.0})
    assert "_fault" not in _init_kwargs(spec)
    with serve_faults({"m:3": "sleep:0.2", "other:1": "raise"}):
        assert _init_kwargs(spec)["_fault"] == "sleep:0.2"
        assert "fault" not in str(spec.to_user_config())  # what Serve stores and `rayml serve status` reads back
    assert "_fault" not in _init_kwargs(spec) and faults.serve_faults() == {}


def test_blocks_nest_and_restore() -> None:
    with serve_faults({"m:3": "raise", "m:4": "scale:100"}):
        with serve_faults({"m:3": "sleep:1"}):
            assert faults.serve_faults() == {"m:3": "sleep:1", "m:4": "scale:100"}
        assert faults.serve_faults() == {"m:3": "raise", "m:4": "scale:100"}
    assert faults.serve_faults() == {}


@pytest.mark.parametrize("bad", [{"m": "raise"}, {"m:v1": "raise"}, {"m:1": "explode"}, {"m:1": "sleep:soon"}])
def test_bad_faults_fail_up_front_and_change_nothing(bad: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="Hint"), serve_faults(bad):
        pass
    assert faults.serve_faults() == {}


def test_parse() -> None:
    assert faults.parse_serve_fault(None) == ("", 0.0)
    assert faults.parse_serve_fault("raise") == ("raise", 0.0)
    assert faults.parse_serve_fault("scale:100") == ("scale", 100.0)


def test_a_spec_deployed_before_the_hook_moved_still_reads_back() -> None:
    # running applications and rendered manifests of earlier releases carry `fault: null` in every version
    version = VersionSpec.model_validate({"version": 1, "weight": 1.0, "deployment": "model-m-v1", "fault": None})
    assert version.model_dump() == {
        "version": 1,
        "weight": 1.0,
        "deployment": "model-m-v1",
        "local_path": None,
        "offline_metrics": {},
    }
