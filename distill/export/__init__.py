"""Privacy-safe sharing: a distilled set exported as a Hugging Face dataset with its card, and the privacy
verdict that decides whether it may leave the run folder.

- :mod:`rsdistill.export.verdict`: near copies against the test-to-train distance distribution, the
  membership attack next to a real coreset's, the verdict (`measure_privacy`, `record_verdict`); how it reads
  in :mod:`~rsdistill.export.verdict_text`, its thresholds in :mod:`~rsdistill.export.thresholds`.
- :mod:`rsdistill.export.generator_attack`: the membership attack on the generator (diffusion loss).
- :mod:`rsdistill.export.export`: ``rsdistill export`` (`export_set`, `ExportOptions`).
- :mod:`rsdistill.export.source`, :mod:`~rsdistill.export.hfdata`, :mod:`~rsdistill.export.card`,
  :mod:`~rsdistill.export.hub`: what is exported, the dataset formats, the card, the Hub push.

Modules are imported by name (``from rsdistill.export.verdict import ...``); this package imports nothing, so
the pipeline's import of the verdict does not load `datasets`.
"""
