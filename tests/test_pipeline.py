"""`rsdistill run` end to end on fake data, with tiny models (the pretrained path and the scratch preset)."""

from __future__ import annotations

import json
from pathlib import Path

from rsdistill.cli.main import main
from rsdistill.generator.tiny import tiny_sd_folder

TINY = [
    "--max_train_steps", "2", "--num_inference_steps", "2", "--candidates", "2", "--runs", "1", "--steps", "3",
    "generator.classifier_steps=2", "generator.vae_steps=2", "generator.checkpointing_steps=1",
    "generator.train_batch_size=2", "evaluation.compile=false", "evaluation.baselines=random",
    "refine.iterations=2", "refine.width=8", "refine.compile=false",
]


def finished_at(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["finished_at"]


def test_run_with_a_pretrained_bundle_then_skips_done_stages(make_imagefolder, tmp_path: Path) -> None:
    root = make_imagefolder(counts={"forest": 6, "lake": 6, "town": 6}, size=32, test_per_class=2)
    bundle = tiny_sd_folder(tmp_path / "sd")
    run_dir, shared = tmp_path / "run", tmp_path / "shared"
    args = ["run", "--dataset", f"imagefolder:{root}", "--ipc", "1", "--pretrained_model_name_or_path", str(bundle),
            "--resolution", "32", "--out", str(run_dir), "--shared-dir", str(shared), *TINY]
    assert main(args) == 0
    records = [json.loads(line) for line in (run_dir / "synthesis" / "set" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["label"] for r in records) == ["forest", "lake", "town"]
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert {row["kind"] for row in report["rows"]} == {"set", "baseline"}
    scored = [row for row in report["rows"] if row["kind"] == "set"]
    assert Path(scored[0]["path"]) == run_dir / "refine" / "set"  # the refined set is the one scored
    done = [*shared.glob("*/*-*"), run_dir / "prototypes", run_dir / "synthesis", run_dir / "refine"]
    stamps = {p.name: finished_at(p) for p in done}
    assert main(args) == 0  # everything done: nothing is rebuilt
    assert stamps == {p.name: finished_at(p) for p in done}
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert {"base", "captions", "generator", "prototypes", "prompts", "synthesis", "refine"} <= set(stages)


def test_scratch_generator_is_shared_between_ipcs(make_imagefolder, tmp_path: Path) -> None:
    root = make_imagefolder(counts={"forest": 5, "lake": 5}, size=16, test_per_class=1)
    for ipc in (1, 2):
        run_dir = tmp_path / f"run-ipc{ipc}"
        args = ["run", "--dataset", f"imagefolder:{root}", "--ipc", str(ipc), "--resolution", "16",
                "--out", str(run_dir), "--shared-dir", str(tmp_path / "shared"), "--no-evaluate",
                "generator.prompts=class-names", *TINY]
        assert main(args) == 0
        assert len((run_dir / "synthesis" / "set" / "metadata.jsonl").read_text().splitlines()) == 2 * ipc
    assert len(list((tmp_path / "shared").glob("*/generator-*"))) == 1
    assert len(list((tmp_path / "shared").glob("*/base-*"))) == 1


def test_base_stage_identity_follows_the_preset_defaults(monkeypatch) -> None:
    from dataclasses import replace

    from rsdistill.core.config import GeneratorConfig
    from rsdistill.generator import scratch
    from rsdistill.pipeline import base_settings

    before = base_settings(GeneratorConfig(), 64)
    monkeypatch.setitem(scratch.PRESETS, "scratch-cpu", replace(scratch.PRESETS["scratch-cpu"], vae_steps=7))
    assert base_settings(GeneratorConfig(), 64) != before
    pretrained = GeneratorConfig(pretrained_model_name_or_path="some/folder")
    assert "preset_settings" not in base_settings(pretrained, 64)
