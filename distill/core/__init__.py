"""The ground floor: errors, atomic writes, config, runtime and stage folders. Imports no stage."""
