"""The name -> loss table: every CLI name, its options, defaults, and the errors users see."""

from __future__ import annotations

from dataclasses import fields

import pytest

from train.losses import LOSSES, LossSettingError, build_loss, describe_losses, resolve_options

NAMES = ["ce", "balanced-ce", "focal", "focal-star", "ghm", "pisa", "pisa-center", "random", "ohem"]


def test_every_issue_name_is_registered() -> None:
    assert sorted(LOSSES) == sorted(NAMES)
    assert [d["name"] for d in describe_losses()] == list(LOSSES)


def test_describe_lists_every_option_with_default_and_help() -> None:
    for entry in describe_losses():
        spec = LOSSES[entry["name"]]
        assert {o["name"] for o in entry["options"]} == {f.name for f in fields(spec.factory)}
        for opt in entry["options"]:
            assert opt["default"] == spec.defaults[opt["name"]]
            assert opt["help"], f"{entry['name']}.{opt['name']} has no help text"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ce", {"alpha": -1.0, "gamma": 0.0, "reg_loss": "smooth-l1", "reg_beta": 0.11}),
        ("balanced-ce", {"alpha": 0.75, "gamma": 0.0}),
        ("focal", {"alpha": 0.25, "gamma": 2.0, "reg_loss": "smooth-l1", "reg_beta": 0.11}),
        ("focal-star", {"gamma": 4.0, "beta": 0.0}),
        ("ghm", {"bins": 30, "momentum": 0.75, "reg_mu": 0.02, "reg_bins": 10, "reg_momentum": 0.7, "reg_weight": 10.0, "reg_loss": "asl1"}),
        ("pisa", {"alpha": 0.25, "gamma": 2.0, "isr_k": 2.0, "isr_bias": 0.0, "carl_k": 1.0, "carl_bias": 0.2, "reg_loss": "smooth-l1", "reg_beta": 0.11}),
        ("random", {"num_samples": 256, "pos_fraction": 0.25}),
        ("ohem", {"num_samples": 256, "pos_fraction": 0.25}),
    ],
)  # fmt: skip
def test_per_loss_defaults(name: str, expected: dict) -> None:
    resolved = resolve_options(name)
    assert {k: resolved[k] for k in expected} == expected


def test_grad_clip_recommendations() -> None:
    clips = {name: spec.grad_clip for name, spec in LOSSES.items()}
    assert clips["ghm"] == clips["pisa"] == clips["pisa-center"] == 35.0
    assert clips["focal"] is None


def test_loss_opt_strings_are_parsed_by_type() -> None:
    resolved = resolve_options(
        "ghm", {"bins": "10", "momentum": "0", "ghm_r": "false", "reg_loss": "giou"}
    )
    assert resolved["bins"] == 10 and isinstance(resolved["bins"], int)
    assert resolved["momentum"] == 0.0 and isinstance(resolved["momentum"], float)
    assert resolved["ghm_r"] is False and resolved["reg_loss"] == "giou"
    assert build_loss("ghm", {"ghm_r": "off", "reg_loss": "giou"}).reg_loss == "giou"


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("nope", {}, "valid: balanced-ce, ce"),
        ("focal", {"gama": "2"}, "no option 'gama'"),
        ("ghm", {"bins": "2.5"}, "expected an integer"),
        ("focal", {"gamma": "two"}, "expected a number"),
        ("pisa", {"carl_rescale": "maybe"}, "true/false"),
        ("focal", {"reg_loss": "l2"}, "reg_loss='l2' is not one of"),
        ("pisa", {"isr_normalizer": "image"}, "isr_normalizer"),
        ("ghm", {"level_mode": "levels"}, "level_mode"),
        ("ghm", {"reg_loss": "smooth-l1"}, "needs reg_loss=asl1"),
        ("focal-star", {"gamma": "0"}, "gamma"),
        ("random", {"pos_fraction": "1.5"}, "pos_fraction"),
    ],
)
def test_bad_names_and_options_raise_one_error_type(name: str, options: dict, message: str) -> None:
    with pytest.raises(LossSettingError, match=message):
        build_loss(name, options)
