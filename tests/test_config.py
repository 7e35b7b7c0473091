from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rsdistill.cli.main import main
from rsdistill.core.config import RunConfig, load_config
from rsdistill.core.errors import RSDistillError


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "data": {"dataset": "ucmerced"}, "prototypes": {"ipc": 5}}))
    config = load_config(path, ["prototypes.ipc=7", "generator.use_lora=true", "generator.snr_gamma=5.0"])
    assert isinstance(config, RunConfig)
    assert (config.seed, config.data.dataset, config.prototypes.ipc) == (3, "ucmerced", 7)
    assert config.generator.use_lora is True and config.generator.snr_gamma == 5.0
    assert load_config(None, ["generator.snr_gamma=none"]).generator.snr_gamma is None


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
