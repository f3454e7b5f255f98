"""The `tune` section and what `textrnn tune` checks before a trial: every mistake is one line naming
`tune.space.<key>`; a study refuses a worker with another config; `--apply` writes a loadable params file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from conftest import PARAMS, make_config
from fault_kit import assert_one_line_error, cli
from textrnn import config, tune, tune_space
from textrnn.config import ConfigError

BAD_SPACES = [
    # (override, fragments of the one error line)
    ("tune.space.foo={low: 1, high: 2}", ["tune.space", "'foo' is not a variant option"]),
    ("tune.space.cell={choices: [gru, lstm]}", ["tune.space", "'cell' is not a variant option"]),
    ("tune.space.hidden={low: 30, high: 20}", ["tune.space.hidden", "low (30) is above high (20)"]),
    ("tune.space.hidden={choices: []}", ["tune.space.hidden", "at least one value"]),
    ("tune.space.hidden={low: 8}", ["tune.space.hidden", "needs low and high"]),
    ("tune.space.dropout={low: 0.0, high: 0.5, log: true}", ["tune.space.dropout", "log needs low > 0"]),
    ("tune.space.dropout={low: 0.1, high: 0.5, choices: [0.2]}", ["tune.space.dropout", "either choices or"]),
    ("tune.space.dropout={low: 0.1, high: 0.5, step: 0}", ["tune.space.dropout.step"]),
    ("tune.trials=0", ["tune.trials"]),
    ("tune.heartbeat_seconds=0", ["tune.heartbeat_seconds"]),
]


@pytest.mark.parametrize(("override", "fragments"), BAD_SPACES, ids=[case[0] for case in BAD_SPACES])
def test_a_malformed_tune_section_is_one_line_naming_the_key(tmp_path: Path, override: str, fragments: list[str]) -> None:
    assert_one_line_error(cli(tmp_path, "params", "--params", str(PARAMS), "--set", override), "params.yaml", *fragments)


MISFITS = [
    # (variant, override, fragments): well-formed, but not for this variant
    ("gru", "tune.space.pool={low: 1, high: 2}", ["tune.space.pool", "takes a choices list"]),
    ("gru", "tune.space.hidden={low: 8.5, high: 32}", ["tune.space.hidden", "whole number"]),
    ("gru", "tune.space.hidden={low: 8, high: 32, step: 2.5}", ["tune.space.hidden", "whole number"]),
    ("gru", "tune.space.dropout={low: 0.0, high: 1.5}", ["tune.space.dropout", "1.5", "variant 'gru'"]),
    ("gru", "tune.space.learning_rate={choices: [0.01, -1.0]}", ["tune.space.learning_rate", "-1.0"]),
    ("bag", "tune.space.pool={choices: [last, max]}", ["tune.space.pool", "'max'", "variant 'bag'"]),
    ("bag", "tune.space.layers={low: 1, high: 2}", ["tune.space.layers", "variant 'bag'"]),
]


@pytest.mark.parametrize(("variant", "override", "fragments"), MISFITS, ids=[f"{case[0]}:{case[1]}" for case in MISFITS])
def test_a_space_that_does_not_fit_the_variant_fails_before_any_trial(tmp_path: Path, variant: str, override: str,
                                                                      fragments: list[str]) -> None:
    result = cli(tmp_path, "tune", "--variant", variant, "--params", str(PARAMS), "--set", "data.source=sample",
                 "--set", override)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "mlflow.db").exists()  # no run was made


def test_suggestions_keep_each_option_s_type_and_bounds(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "tune.space={hidden: {low: 8, high: 64, log: true}, dropout: {low: 0.0, high: 0.5, "
                                "step: 0.1}, pool: {choices: [max, mean]}, learning_rate: {low: 0.001, high: 0.01}}")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    variant = cfg.variant("gru")
    tune_space.check_space(cfg, variant)
    for _ in range(30):
        chosen = tune_space.suggest(study.ask(), cfg.tune.space)
        candidate = tune_space.tuned(variant, chosen)
        assert isinstance(candidate.config.hidden, int) and 8 <= candidate.config.hidden <= 64
        assert candidate.config.dropout in {0.0, 0.1, 0.2, 0.3, 0.4, 0.5} or abs(candidate.config.dropout * 10 % 1) < 1e-9
        assert candidate.config.pool in ("max", "mean") and 0.001 <= candidate.config.learning_rate <= 0.01
        assert candidate.config.cell == "gru" and candidate.config.embed_dim == variant.config.embed_dim


def test_a_study_refuses_a_worker_with_another_variant_or_config(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    tune.open_study(cfg, cfg.variant("gru"), "shared")
    tune.open_study(make_config(tmp_path), cfg.variant("gru"), "shared")  # the same config joins
    with pytest.raises(ConfigError, match="study 'shared' tunes variant 'gru'.*'lstm'"):
        tune.open_study(cfg, cfg.variant("lstm"), "shared")
    other = make_config(tmp_path, "train.epochs=7")
    with pytest.raises(ConfigError, match="name a new --study"):
        tune.open_study(other, other.variant("gru"), "shared")
    other_space = make_config(tmp_path, "tune.space.hidden={low: 4, high: 8}")
    with pytest.raises(ConfigError, match="tune.space differ"):
        tune.open_study(other_space, other_space.variant("gru"), "shared")
    assert tune.default_study(cfg, "gru") != tune.default_study(other, "gru")


def test_apply_adds_the_variant_and_keeps_everything_else(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text(encoding="utf-8").replace("epochs: 8", "epochs: 5"), encoding="utf-8")
    before = config.load(params)
    tuned = tune_space.tuned(before.variant("gru"), {"hidden": 48, "learning_rate": 0.004}, "gru_tuned")
    tune.apply(params, tuned)
    after = config.load(params)
    assert after.variants["gru_tuned"] == tuned.config and after.train.epochs == 5
    assert {name: v for name, v in after.variants.items() if name != "gru_tuned"} == before.variants
    # Applied again (a later study), the variant is replaced, not duplicated.
    tune.apply(params, tune_space.tuned(before.variant("gru"), {"hidden": 12}, "gru_tuned"))
    assert config.load(params).variants["gru_tuned"].hidden == 12
    assert list(config.load(params).variants).count("gru_tuned") == 1


def test_apply_to_a_file_relying_on_the_default_variants_keeps_them(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"epochs": 3}}), encoding="utf-8")
    defaults = config.load(params).variants
    tune.apply(params, tune_space.tuned(config.load(params).variant("lstm"), {"hidden": 20}, "lstm_tuned"))
    written = config.load(params)
    assert set(written.variants) == set(defaults) | {"lstm_tuned"} and written.train.epochs == 3


def test_an_unusable_storage_is_one_line(tmp_path: Path) -> None:
    for url, fragment in [("nosuchdb://x", "Optuna storage"),
                          ("postgresql://user:secret@127.0.0.1:1/optuna", "Optuna storage")]:
        result = cli(tmp_path, "tune", "--variant", "gru", "--params", str(PARAMS), "--set", "data.source=sample",
                     "--set", "data.sample.train_rows=200", "--set", "data.sample.test_rows=40",
                     env={"TEXTRNN_OPTUNA_STORAGE": url}, timeout=120)
        line = assert_one_line_error(result, fragment)
        assert "secret" not in result.stdout + result.stderr, line
