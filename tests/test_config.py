"""Run configuration: validation, presets, round trips."""
import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from resx.core.config import PRESETS, ConfigError, RunConfig, parse_assignment

FIELDS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                      st.lists(st.integers(), max_size=2))


def test_presets_are_valid_and_round_trip():
    """Every preset validates, and to_dict/from_dict gives back an equal configuration."""
    assert "demo-mlp" in PRESETS and "demo-resnet" in PRESETS
    assert list(PRESETS)[:2] == ["demo-mlp", "mechanism-resnet"]   # the Lab's first two choices
    assert {"cifar10-resnet8", "cifar100-resnet8"} <= set(PRESETS)
    for cfg in PRESETS.values():
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert PRESETS["cifar10-resnet8"].width == 4 and PRESETS["cifar10-resnet8"].num_classes == 10
    assert PRESETS["cifar100-resnet8"].num_classes == 100


@pytest.mark.parametrize("changes,field", [
    ({"depth": 0}, "depth"), ({"width": -3}, "width"), ({"position": 5}, "position"),
    ({"lr": float("nan")}, "lr"), ({"arch": "vit"}, "arch"), ({"dataset": "imagenet"}, "dataset"),
    ({"dataset": "npz"}, "npz_path"), ({"finetune": "some"}, "finetune"), ({"augment": 1}, "augment"),
])
def test_errors_name_the_field_and_what_is_allowed(changes, field):
    """A bad value raises ConfigError naming its field, the value and the allowed range."""
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert info.value.field == field
    assert field in str(info.value) and "allowed" in str(info.value)


def test_position_range_follows_depth_and_arch():
    """Positions run from 0 (after the stem) to the number of blocks; resnet has 3 stages."""
    assert RunConfig(depth=4, position=4).num_positions == 5
    RunConfig(dataset="shapes", arch="resnet", depth=2, position=6)
    with pytest.raises(ConfigError, match="position"):
        RunConfig(dataset="shapes", arch="resnet", depth=2, position=7)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELDS) + ["bogus", ""]), ANY_VALUE, max_size=5))
def test_arbitrary_dicts_raise_only_the_configuration_error(d):
    """Any dict either builds a valid RunConfig or raises ConfigError, never another exception."""
    try:
        cfg = RunConfig.from_dict(d)
    except ConfigError as e:
        assert e.field and "allowed" in str(e)
    else:
        assert RunConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_command_line_assignments_raise_only_the_configuration_error(text):
    """Any `--set` text is parsed into a typed field value or rejected with ConfigError."""
    try:
        key, value = parse_assignment(text)
    except ConfigError:
        return
    assert key in FIELDS


def test_operator_caps_refuse_configurations_over_them():
    """Caps from the environment refuse a wider, deeper or larger run with a message naming the cap."""
    from resx.core.config import OperatorCaps

    caps = OperatorCaps.from_env({"RESX_MAX_WIDTH": "32", "RESX_MAX_N": "500"})
    assert caps.check(RunConfig(width=32, n=500, n_probe=500, n_test=500)).width == 32
    with pytest.raises(ConfigError, match="at most 32 on this server"):
        caps.check(RunConfig(width=64))
    with pytest.raises(ConfigError, match="n_probe"):
        caps.check(RunConfig(width=16, n=100, n_probe=2000, n_test=100))
    with pytest.raises(ConfigError, match="RESX_MAX_DEPTH"):
        OperatorCaps.from_env({"RESX_MAX_DEPTH": "-1"})
