"""The built-in architecture specs, one YAML file per family (shipped by the builtin_specs plugin)."""
