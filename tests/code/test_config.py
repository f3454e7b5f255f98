"""params.yaml is validated on load: every mistake is one line naming the file and the key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from textrnn import config, filenames
from textrnn.config import ConfigError
from textrnn.params_render import render

from conftest import PARAMS
from fault_kit import cli


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_repository_params_load_with_the_lesson_variants_the_baseline_and_the_pooled_ones() -> None:
    cfg = config.load(PARAMS)
    assert list(cfg.variants) == ["rnn", "rnn_masked", "lstm", "gru", "bilstm", "bag", "bilstm_mean", "bilstm_adv"]
    assert cfg.variants["bilstm_adv"].pool == "max" and cfg.variants["bilstm_adv"].sparse_embedding is False
    assert cfg.variants["bilstm_adv"].adversarial == 0.05 and cfg.variants["bilstm_mean"].adversarial == 0.0
    assert cfg.variants["bilstm"].layers == 2 and cfg.variants["bilstm"].bidirectional
    assert not cfg.variants["rnn"].masked and cfg.variants["rnn_masked"].masked
    assert cfg.tokenizer.vocab_size == 20000


def test_overrides_are_typed_like_yaml_and_create_nested_keys() -> None:
    cfg = config.load(PARAMS, ["train.epochs=3", "data.source=sample", "variants.lstm.hidden=12", "buckets.token_budget=512"])
    assert cfg.train.epochs == 3 and cfg.data.source == "sample"
    assert cfg.variants["lstm"].hidden == 12 and cfg.variants["lstm"].cell == "lstm"
    assert cfg.buckets.token_budget == 512


def test_numbers_in_exponent_notation_are_floats_where_a_float_is_expected() -> None:
    # PyYAML reads `1e-3` as a string; a float field takes it, an int field does not (see the cases below).
    assert config.load(PARAMS, ["train.learning_rate=1e-3", "registry.min_delta=0"]).train.learning_rate == 0.001


def test_the_tokenizer_lives_in_the_encoded_directory() -> None:
    cfg = config.load(PARAMS, ["paths.encoded=out/enc"])
    assert cfg.paths.tokenizer == Path("out/enc/tokenizer.json")


def test_output_paths_are_checked_against_the_working_directory(tmp_path: Path) -> None:
    inside = config.load(PARAMS, [f"paths.models={tmp_path / 'm'}"])
    assert inside.paths.models == tmp_path / "m"
    with pytest.raises(ConfigError, match=r"paths\.models: .* resolves outside the working directory"):
        inside.check_paths(root=tmp_path / "elsewhere")


def test_config_is_frozen() -> None:
    cfg = config.load(PARAMS)
    with pytest.raises(Exception):
        cfg.train.epochs = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochz=3"], "unknown key 'train.epochz'"),
        (["colour=blue"], "unknown key 'colour'"),
        (["tokenizer.vocab_size=2"], "tokenizer.vocab_size"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["data.val_fraction=0"], "data.val_fraction"),
        (["variants.lstm.cell=transformer"], "variants.lstm.cell"),
        (["train.epochs=many"], "train.epochs"),
        (["data.source=csv"], "data.train_path"),
        (["train.epochs=true"], "train.epochs"),
        (["train.learning_rate=.inf"], "train.learning_rate"),
        (["tokenizer.vocab_size=1e20"], "tokenizer.vocab_size"),
        (["variants.gru.batch_size=8.0"], "variants.gru.batch_size"),
        (["paths.artifacts=artifacts"], "unknown key 'paths.artifacts'"),
        (["paths.models=../models"], "paths.models"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.load(PARAMS, overrides)
    assert message in str(error.value)
    assert str(PARAMS) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train..epochs=3", "train.epochs.x=3"])
def test_bad_overrides_are_rejected(override: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.load(PARAMS, [override])
    assert "\n" not in str(error.value)


def test_unknown_key_in_the_file_names_file_and_key(tmp_path: Path) -> None:
    path = write_params(tmp_path, "seed: 1\ntrain:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'train.learning_rat'"):
        config.load(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write_params(tmp_path, "train: [unclosed\n"))
    (tmp_path / "bytes.yaml").write_bytes(b"seed: 1\ntrain:\n  device: cp\xe9\n")
    with pytest.raises(ConfigError, match=r"bytes\.yaml: line 3 is not valid UTF-8 \(byte 0xe9\)$"):
        config.load(tmp_path / "bytes.yaml")


def test_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown variant 'lstmm'.*bilstm"):
        config.load(PARAMS).variant("lstmm")


def test_params_yaml_is_config_py_defaults_written_out() -> None:
    """config.py is the one place a default (and its comment) is defined; params.yaml, which DVC tracks
    and people read, is its rendering. A default changed in one place only fails here."""
    assert render(config.Config()) == PARAMS.read_text(encoding="utf-8"), (
        "params.yaml is not config.py's defaults; run `textrnn params --defaults > params.yaml`")
    assert config.load(PARAMS) == config.Config()


# Values YAML would misread if written plainly (bools, null, numbers, a colon, a leading '#' or '['), paths
# with spaces, a variant with options: each must read back as the same value.
AWKWARD = [
    "seed=0", "data.classes=['yes', 'null', '3', 'a: b', '#x', '[y]', 'Sci/Tech']", "data.text_fields=[text]",
    "data.source=csv", "data.train_path=in put/train.csv", "data.test_path=test.csv", "data.val_fraction=0.25",
    "tracking.experiment='on'", "registry.model_name='1e3'", "buckets.token_budget=4096", "train.threads=null",
    "train.learning_rate=3e-05", "variants.wide={cell: gru, embed_dim: 8, hidden: 4, layers: 2, "
    "bidirectional: true, masked: true, batch_size: 4, pool: attention, dropout: 0.25}",
]


def test_a_config_written_out_reads_back_equal(tmp_path: Path) -> None:
    cfg = config.from_dict(config.apply_overrides(config.read_raw(PARAMS), AWKWARD))
    written = write_params(tmp_path, render(cfg))
    assert config.load(written) == cfg
    assert "pool: attention," in written.read_text() and "attention" not in render(config.Config())


def test_the_params_command_prints_the_resolved_config(tmp_path: Path) -> None:
    shown = cli(tmp_path, "params", "-p", str(PARAMS), "-S", "train.epochs=3")
    assert shown.returncode == 0 and "  epochs: 3\n" in shown.stdout
    assert config.load(write_params(tmp_path, shown.stdout)).train.epochs == 3
    broken = write_params(tmp_path, "train: {epochs: many}\n")
    refused = cli(tmp_path, "params", "-p", str(broken))
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: {broken}: train.epochs: Input should be a valid integer (got 'many')")
    # --defaults reads no file: it is how params.yaml itself is made.
    defaults = cli(tmp_path, "params", "--defaults", "-p", str(broken))
    assert defaults.returncode == 0 and defaults.stdout == PARAMS.read_text(encoding="utf-8")


# ------------------------------------------------------------------------ the output files' names


def named_files(paths: config.PathsConfig, variant: str, split: str) -> dict[str, Path]:
    """Every file `PathsConfig` names: its properties, and its methods of one variant or one split."""
    files = {}
    for name, member in vars(config.PathsConfig).items():
        if isinstance(member, property):
            files[name] = getattr(paths, name)
        elif inspect.isfunction(member) and not name.startswith("_") and not name.endswith("_dir"):
            parameters = list(inspect.signature(member).parameters)[1:]
            if parameters in (["variant"], ["split"]):
                files[name] = member(paths, variant if parameters == ["variant"] else split)
    return files


def test_every_output_file_lies_in_its_output_directory() -> None:
    paths = config.load(PARAMS).paths
    files = named_files(paths, "gru", "train")
    assert files
    per_variant = (paths.model_dir("gru"), paths.metrics_dir("gru"), paths.plots_dir("gru"))
    shared = (paths.prepared, paths.encoded, paths.metrics)
    for name, file in files.items():
        assert file.parent in (*per_variant, *shared), f"PathsConfig.{name}: {file}"
    # Directories are checked against the working directory on load (check_paths): so are their files.
    assert not any(file.parent == paths.cache for file in files.values())


def test_output_files_are_distinct_and_every_file_name_is_used() -> None:
    paths = config.load(PARAMS).paths
    files, others = named_files(paths, "gru", "train"), named_files(paths, "bag", "test")
    assert len(set(files.values())) == len(files)
    shared = {name for name, member in vars(config.PathsConfig).items() if isinstance(member, property)}
    assert all(others[name] != file for name, file in files.items() if name not in shared)
    constants = {value for name, value in vars(filenames).items() if name.endswith("_FILE")}
    splits = {filenames.prepared_split_file("train"), filenames.encoded_split_file("train")}
    assert {file.name for file in files.values()} == constants | splits


def test_output_files_follow_the_configured_directories() -> None:
    paths = config.load(PARAMS, ["paths.models=out/m", "paths.encoded=out/enc"]).paths
    assert paths.onnx_file("gru") == Path("out/m/gru/model.onnx")
    assert paths.served_tokenizer("gru").parent == paths.onnx_file("gru").parent
    assert paths.served_tokenizer("gru").name == paths.tokenizer.name == filenames.TOKENIZER_FILE
    assert paths.encoded_split("val") == Path("out/enc/val.npz")
