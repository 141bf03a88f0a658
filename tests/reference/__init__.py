"""Independent reference implementations used to check bridge_core hook values."""
