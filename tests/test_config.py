from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from rsdistill.cli.common import config_from_args, split_overrides
from rsdistill.cli.main import build_parser, main
from rsdistill.core.config import (
    SECTIONS,
    GeneratorConfig,
    RunConfig,
    SynthesisConfig,
    field_help,
    load_config,
    section_class,
)
from rsdistill.core.errors import RSDistillError


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "data": {"dataset": "ucmerced"}, "prototypes": {"ipc": 5}}))
    config = load_config(path, ["prototypes.ipc=7", "generator.use_lora=true", "generator.snr_gamma=5.0"])
    assert isinstance(config, RunConfig)
    assert (config.seed, config.data.dataset, config.prototypes.ipc) == (3, "ucmerced", 7)
    assert config.generator.use_lora is True and config.generator.snr_gamma == 5.0
    assert load_config(None, ["generator.snr_gamma=none"]).generator.snr_gamma is None


@pytest.mark.parametrize("value", ["random,full", "[random, full]", "[random,full]", " random , full "])
def test_a_list_override_reads_the_comma_and_the_bracket_forms(value: str) -> None:
    assert load_config(None, [f"evaluation.baselines={value}"]).evaluation.baselines == ["random", "full"]
    assert load_config(None, ["evaluation.baselines=[]"]).evaluation.baselines == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prototypes.ipcs=3"], "Unknown setting 'prototypes.ipcs'"),
        (["prototypes.ipc=ten"], "not a valid int"),
        (["nosection.ipc=3"], "Unknown config section"),
        (["prototypes.ipc"], "section.key=value"),
    ],
)
def test_bad_overrides_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(RSDistillError, match=message):
        load_config(None, overrides)


def test_unknown_yaml_key_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  datset: eurosat\n")
    with pytest.raises(RSDistillError, match=r"data\.datset"):
        load_config(path)
    with pytest.raises(RSDistillError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_config_show_prints_effective_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "data.dataset=ucmerced", "prototypes.ipc=50"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["data"]["dataset"] == "ucmerced" and shown["prototypes"]["ipc"] == 50


def parsed(argv: list[str]) -> RunConfig:
    """The `RunConfig` a command line resolves to (parsed as `rsdistill` parses it, nothing run)."""
    argv, overrides = split_overrides(argv)
    args = build_parser().parse_args(argv)
    args.overrides = overrides
    return config_from_args(args)


def test_finetune_and_run_resolve_the_same_defaults() -> None:
    finetune = parsed(["finetune"])
    run = parsed(["run"])
    assert finetune.generator == run.generator == GeneratorConfig()
    assert finetune.data == run.data and (finetune.seed, finetune.device) == (run.seed, run.device)
    assert run.generator.consistency_lambda == 0.1 and run.generator.consistency_max_timestep == 600


def test_a_flag_sets_the_same_field_under_every_command() -> None:
    for command in (["finetune"], ["run"]):
        config = parsed([*command, "--consistency_lambda", "0.3", "--max-train-steps", "7", "--no-augment"])
        assert (config.generator.consistency_lambda, config.generator.max_train_steps) == (0.3, 7)
        assert config.generator.augment is False


def test_resolution_is_one_setting_that_reaches_every_stage() -> None:
    holders = [name for name in SECTIONS if "resolution" in {f.name for f in fields(section_class(name))}]
    assert holders == ["data"]
    assert parsed(["run", "--resolution", "32"]).data.resolution == 32
    assert parsed(["evaluate", "--out", "r", "--resolution", "32"]).data.resolution == 32


def test_yaml_stands_unless_a_flag_is_given(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"resolution": 32}, "evaluation": {"runs": 5}}))
    config = parsed(["evaluate", "--out", "r", "--config", str(path)])
    assert (config.data.resolution, config.evaluation.runs) == (32, 5)
    config = parsed(["evaluate", "--out", "r", "--config", str(path), "--runs", "2", "evaluation.steps=9"])
    assert (config.data.resolution, config.evaluation.runs, config.evaluation.steps) == (32, 2, 9)


def test_sampler_settings_come_from_the_synthesis_config() -> None:
    from rsdistill.generator.sampling import SamplerSettings

    config = parsed(["generate", "--generator", "g", "--out", "o", "--prototype_strength", "0.3"]).synthesis
    settings = SamplerSettings.from_config(config)
    assert settings.prototype_strength == 0.3 and settings.mode == config.guidance == SynthesisConfig().guidance
    assert SamplerSettings.from_config(SynthesisConfig()).prototype_strength == SynthesisConfig().prototype_strength


def test_every_field_has_help_and_a_flag_on_run() -> None:
    help = {name: field_help(section_class(name)) for name in ("", *SECTIONS)}
    for name, text in help.items():
        missing = {f.name for f in fields(section_class(name))} - set(text) - (set(SECTIONS) if not name else set())
        assert not missing, f"{name or 'RunConfig'} fields without help: {missing}"
    dests = {action.dest for action in subcommand("run")._actions}
    expected = {"generator.consistency_lambda", "prototypes.ipc", "evaluation.steps", "run_dir", "generator.captions"}
    assert expected <= dests


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_the_autoencoder_setting_reaches_the_scratch_preset() -> None:
    from rsdistill.generator.base import scratch_preset

    assert scratch_preset(parsed(["run"]).generator, 64).autoencoder == "kl"
    chosen = parsed(["run", "generator.autoencoder=adversarial", "--resolution", "32"])
    preset = scratch_preset(chosen.generator, chosen.data.resolution)
    assert (preset.autoencoder, preset.resolution) == ("adversarial", 32)
