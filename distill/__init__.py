"""rsdistill core: data, run directories, config, the generator, synthesis, the pipeline and the CLI."""

__version__ = "0.1.0"
