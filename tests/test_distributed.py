"""Two real processes on the CPU (torchrun, gloo): the same prototypes, one training, the same set, the same
Inception features and the same scores as one process.

One torchrun launch runs ``prototypes``, ``finetune``, ``generate`` and ``evaluate`` as command lines, and the
Inception features of fid and kid (tests/distributed_worker.py), so torch and diffusers are imported once per
process; each test then compares one command's output with a single process's. A launch this machine cannot
serve (a multi-GPU config without GPUs, more processes than GPUs) is refused before any work, with the
environment `accelerate launch --multi_gpu` sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rsdistill.core.distributed as distributed
from rsdistill.cli.main import main
from rsdistill.core.config import EvalConfig, PrototypeConfig
from rsdistill.core.distributed import Launch, Processes, check_launch, processes
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import SceneDataset
from rsdistill.data.imageset import read_image_set, write_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.evaluation import evaluate_sets
from rsdistill.evaluate.metrics import fid, inception_features, kid, split_features
from rsdistill.generator.latent_classifier import LatentClassifier, LatentClassifierConfig
from rsdistill.generator.tiny import tiny_sd_folder
from rsdistill.prototypes import encode_split, load_encoder, load_prototypes, run_prototypes
from rsdistill.synthesis.synthesize import synthesize
from tests.conftest import TINTS, write_image
from tests.distributed_worker import INCEPTION_BATCH
from tests.generator_helpers import one_thread
from tests.test_synthesis import CONFIG, files_of, write_prototypes

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["forest", "lake", "town"]
STEPS = 3
EVAL = [
    "--runs",
    "3",
    "--resolution",
    "16",
    "--steps",
    "3",
    "--no-compile",
    "--precision",
    "fp32",
    "--baselines",
    "random",
    "--metrics",
    "mia",
]
# 15 train images in encoder batches of 2: 8 batches, 4 encoded by each process.
PROTOTYPES = ["--resolution", "16", "--ipc", "2", "--batch_size", "2", "--seed", "5"]
# What `accelerate launch --multi_gpu --num_processes 2` gives the first process on a machine without GPUs.
MULTI_GPU_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}


class Inputs:
    """The tiny data and models both runs use, and the folders the launch wrote."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(0)
        data = root / "scenes"
        for label, name in enumerate(CLASSES):
            for i in range(6):
                write_image(data / name / f"{name}_{i}.png", rng, 32, TINTS[label])
        (data / "test.txt").write_text("".join(f"{name}/{name}_0.png\n" for name in CLASSES))
        self.spec = f"imagefolder:{data}"
        self.dataset: SceneDataset = load_dataset(self.spec)
        self.bundle = tiny_sd_folder(root / "bundle", latent_size=8)
        torch.manual_seed(0)
        classifier = LatentClassifierConfig(in_channels=4, num_classes=3, width=8, stages=2, classes=CLASSES)
        LatentClassifier(classifier).save_pretrained(self.bundle / "latent_classifier")
        self.prototypes = write_prototypes(root / "prototypes", self.dataset)
        train = self.dataset.images("train", 16, cache_dir=root / "cache")
        index = np.concatenate([np.flatnonzero(train.labels == label)[:2] for label in range(len(CLASSES))])
        records = [{"method": "random", "source_key": train.keys[i]} for i in index]
        self.set = write_image_set(
            root / "coreset", np.asarray(train.images[index]), train.labels[index], CLASSES, records=records
        )
        self.root = root
        self.out = root / "two"

    def commands(self) -> list[list[str]]:
        data = ["--dataset", self.spec]
        bundle, out = str(self.bundle), self.out
        finetune = f"--resolution 16 --train_batch_size 2 --max_train_steps {STEPS} --checkpointing_steps {STEPS}"
        finetune += f" --learning_rate 1e-3 --no-progress generator.validation_steps=null --output_dir {out}/generator"
        sampling = "--ipc 2 --seed 3 --num_inference_steps 2 --candidates 2 --batch_size 4 --guidance_scale 2.0"
        sampling += f" --generator {bundle} --prototypes {self.prototypes} --out {out}/synthesis"
        return [
            # first, so that no latents cached by fine-tuning stand in for the encoding
            ["prototypes", *data, "--encoder", f"vae:{bundle}", "--out", str(out / "run"), *PROTOTYPES],
            ["inception", self.spec, str(self.set), "16", str(out / "inception.npz")],
            ["finetune", *data, "--pretrained_model_name_or_path", bundle, *finetune.split()],
            ["generate", *data, *sampling.split()],
            ["evaluate", str(self.set), *data, "--out", str(self.out / "report"), *EVAL],
        ]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """The commands, run once by two processes: ``torchrun --nproc_per_node 2`` with ACCELERATE_USE_CPU=1."""
    root = tmp_path_factory.mktemp("distributed")
    inputs = Inputs(root)
    commands = root / "commands.json"
    commands.write_text(json.dumps(inputs.commands()))
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "RSDISTILL_CACHE": str(root / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "distributed_worker.py"),
        str(commands),
    ]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return inputs


def test_prototypes_from_features_encoded_by_two_processes(launched: Inputs, tmp_path: Path) -> None:
    config = PrototypeConfig(encoder=f"vae:{launched.bundle}", ipc=2, batch_size=2)
    with one_thread():
        one = run_prototypes(RunContext.of(launched.dataset, seed=5, resolution=16), config, tmp_path / "prototypes")
        features = encode_split(launched.dataset, "train", 16, load_encoder(config.encoder, "cpu", batch_size=2))
    two = launched.out / "run" / "prototypes"
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2
    (cached,) = (launched.root / "cache" / "features").rglob("train-16px-vae*.npy")  # written by the main process
    np.testing.assert_allclose(np.load(cached), features.features, rtol=0, atol=1e-6)
    assert json.loads(cached.with_suffix(".json").read_text())["keys"] == features.keys
    mine, theirs = load_prototypes(one), load_prototypes(two)
    assert [(p.id, p.source_key, p.members) for p in theirs.prototypes] == [
        (p.id, p.source_key, p.members) for p in mine.prototypes
    ]  # the same clusters and representatives
    np.testing.assert_allclose(theirs.representatives, mine.representatives, rtol=0, atol=1e-6)
    np.testing.assert_allclose(theirs.centroids, mine.centroids, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 15 and 6 images in 2048 dimensions
def test_inception_features_shared_by_two_processes(launched: Inputs) -> None:
    two = np.load(launched.out / "inception.npz")
    with one_thread():
        real = split_features(launched.dataset, "train", 16, batch_size=INCEPTION_BATCH)
        images = read_image_set(launched.set, CLASSES, resolution=16).images
        fake = inception_features(images, INCEPTION_BATCH)
    assert two["real"].shape == (15, 2048) and two["fake"].shape == (6, 2048)
    np.testing.assert_allclose(two["real"], real, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(two["real_cached"], two["real"])  # read back from the main process's cache
    np.testing.assert_allclose(two["fake"], fake, rtol=1e-6, atol=1e-6)
    assert fid(two["real"], two["fake"]) == pytest.approx(fid(real, fake), rel=1e-6)
    assert kid(two["real"], two["fake"])[0] == pytest.approx(kid(real, fake)[0], rel=1e-6, abs=1e-9)


def test_finetuning_trains_once_across_two_processes(launched: Inputs) -> None:
    logs = launched.out / "generator" / "logs"
    steps = [json.loads(line)["step"] for line in (logs / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # one training: every step logged once, by the main process
    assert json.loads((logs / "summary.json").read_text())["processes"] == 2
    assert (launched.out / "generator" / "model_index.json").is_file()


def test_sharded_synthesis_writes_the_single_process_set(launched: Inputs, tmp_path: Path) -> None:
    with one_thread():
        synthesize(
            RunContext.of(launched.dataset, seed=3),
            CONFIG,
            tmp_path / "one",
            launched.bundle,
            launched.prototypes,
            None,
            ipc=2,
        )
    two = launched.out / "synthesis"
    assert files_of(two) == files_of(tmp_path / "one")  # byte-identical set and grid
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2


def test_sharded_evaluation_gives_the_single_process_scores(launched: Inputs, capsys) -> None:
    two = json.loads((launched.out / "report" / "report.json").read_text())
    config = EvalConfig(runs=3, steps=3, compile=False, precision="fp32", baselines=["random"], metrics=["mia"])
    with one_thread():
        one = evaluate_sets(RunContext.of(launched.dataset, resolution=16), config, None, [launched.set])
    assert [row["accuracy"] for row in two["rows"]] == [row["accuracy"] for row in one["rows"]]
    assert two["rows"][0]["metrics"]["mia"] == one["rows"][0]["metrics"]["mia"]  # models trained on rank 0 and 1
    manifest = json.loads((launched.out / "report" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and "runs" not in {name.split("/")[0] for name in manifest["files"]}
    capsys.readouterr()
    again = ["evaluate", str(launched.set), "--dataset", launched.spec, "--out", str(launched.out / "report"), *EVAL]
    assert main(again) == 0  # one process, same settings and set: the report is kept, nothing is trained
    assert "kept as it is" in capsys.readouterr().out
    assert json.loads((launched.out / "report" / "manifest.json").read_text()) == manifest


def test_launch_env_is_read() -> None:
    launch = Launch.from_env({**MULTI_GPU_ENV, "RANK": "1", "LOCAL_RANK": "1", "ACCELERATE_USE_CPU": "True"})
    assert launch == Launch(processes=2, rank=1, local_rank=1, local_processes=2, cpu=True)
    assert Launch.from_env({}) == Launch()
    assert Launch.from_env({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}).processes == 4


def test_launches_this_machine_cannot_serve_are_refused() -> None:
    multi = Launch.from_env(MULTI_GPU_ENV)
    with pytest.raises(RSDistillError, match=r"sees no CUDA GPU.*ACCELERATE_USE_CPU=1 torchrun"):
        check_launch(multi, "auto", gpus=0)
    with pytest.raises(RSDistillError, match="starts 2 processes on this machine, which has 1 CUDA GPU"):
        check_launch(multi, "auto", gpus=1)
    with pytest.raises(RSDistillError, match=r"--device 'cuda:1'.*names one device"):
        check_launch(multi, "cuda:1", gpus=2)
    assert check_launch(multi, "cpu", gpus=0) and check_launch(Launch(2, cpu=True), "auto", gpus=2)
    assert not check_launch(multi, "auto", gpus=2)


def test_multi_gpu_launch_without_gpus_stops_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MULTI_GPU_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "_LAUNCHED", None)
    with pytest.raises(RSDistillError, match="launched as 2 processes for GPUs"):
        processes("auto")
    assert distributed._LAUNCHED is None  # nothing was set up


def test_one_process_is_as_before() -> None:
    procs = processes("cpu")
    assert (procs.count, procs.rank, procs.is_main, procs.distributed) == (1, 0, True, False)
    assert procs.shard([1, 2, 3]) == [1, 2, 3] and procs.gather(5) == [5] and procs.share(7) == 7
    assert procs.on_main(lambda: 9) == 9


class FirstOfTwo(Processes):
    """Rank 0 of 2, the other rank's answers made up: `map_sharded` and `found_on_main` without a launch."""

    def gather(self, value: Any) -> list[Any]:
        return [value, [(position, f"rank 1: {position}") for position in (1, 3)]]

    def share(self, value: Any) -> Any:
        return value


class SecondOfTwo(FirstOfTwo):
    """Rank 1 of 2, told that the main process found what it looked for."""

    def share(self, value: Any) -> Any:
        return True


def test_items_are_dealt_round_robin_and_put_back_in_order() -> None:
    computed: list[int] = []

    def work(item: int) -> str:
        computed.append(item)
        return f"rank 0: {item}"

    results = FirstOfTwo(count=2).map_sharded(work, [0, 1, 2, 3, 4])
    assert computed == [0, 2, 4]
    assert results == ["rank 0: 0", "rank 1: 1", "rank 0: 2", "rank 1: 3", "rank 0: 4"]
    assert FirstOfTwo(count=2).found_on_main(lambda: None, "the cache") is None
    with pytest.raises(RSDistillError, match=r"found the cache, but process 1 does not see it.*every machine sees"):
        SecondOfTwo(count=2, rank=1).found_on_main(lambda: None, "the cache")
