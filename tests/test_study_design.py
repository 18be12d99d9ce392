"""ess.study: the arms and the pre-registered design a study job and its analysis share."""

from __future__ import annotations

import pytest

from ess.adapters.ray.config import JobConfig
from ess.config import config_from_mapping
from ess.errors import ConfigError
from ess.study import ARMS, STAGES, StudyDesign, named_arms


def test_the_default_design_is_the_three_primary_comparisons_of_issue_21():
    design = StudyDesign()
    assert design.pairs == [("joint", "intra"), ("joint", "rsws"), ("joint", "random")]
    assert (design.metric, design.alpha, design.target_gain, design.power) == ("retrain_test_ppl", 0.05, 0.03, 0.8)
    assert ARMS["rsws"].search == {"method": "rsws", "inter_norm": "none", "batchnorm": False}
    assert STAGES.index("search") < STAGES.index("tau") < STAGES.index("planted")


@pytest.mark.parametrize("kw, message", [
    (dict(primary=("joint:nope",)), r"^primary: unknown arm 'nope' in 'joint:nope'"),
    (dict(primary=("joint",)), r"^primary: expected comparisons a:b of two arms, got 'joint'"),
    (dict(primary=("joint:joint",)), r"^primary: expected comparisons a:b"),
    (dict(metric="valid_ppl"), r"^metric: unknown 'valid_ppl'"),
    (dict(alpha=0.0), r"^alpha: must be in \(0, 1\)"),
    (dict(target_gain=1.5), r"^target_gain: must be in \(0, 1\)"),
    (dict(noise_sd=-0.1), r"^noise_sd: must be >= 0"),
])
def test_a_bad_design_is_one_line_naming_the_field(kw, message):
    with pytest.raises(ConfigError, match=message):
        StudyDesign(**kw)


def test_the_design_is_a_nested_config_of_the_study_job():
    job = config_from_mapping(JobConfig, {"design": {"target_gain": 0.05, "primary": ["joint:intra"]}}, "study.yaml")
    assert job.design == StudyDesign(primary=("joint:intra",), target_gain=0.05)
    with pytest.raises(ConfigError, match=r"^study\.yaml: design: "):
        config_from_mapping(JobConfig, {"design": {"bogus": 1}}, "study.yaml")
    with pytest.raises(ConfigError, match="unknown arm"):
        named_arms(("joint", "nope"))
