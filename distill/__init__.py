"""rsdistill: dataset distillation for remote-sensing imagery (prototype-guided diffusion, DPD).

The layers, each importing only from those above it in this list:

- :mod:`rsdistill.core`: errors, atomic writes, config (one dataclass per stage), runtime, stage folders;
- :mod:`rsdistill.data`: dataset sources, splits, the image cache, the image-set format, class names;
- the stages, in pipeline order: :mod:`rsdistill.generator`, :mod:`rsdistill.prototypes`,
  :mod:`rsdistill.captioning`, :mod:`rsdistill.synthesis`, and :mod:`rsdistill.evaluate`;
- :mod:`rsdistill.pipeline` (``rsdistill run``) and :mod:`rsdistill.cli` (the ``rsdistill`` command).
"""

__version__ = "0.1.0"
