"""Built-in plugins: the standard kinds of each extension point and the built-in spec directory.

Installed as `bridge_core.plugins` and registered through the `bridge_core` entry-point group,
exactly as a third-party plugin is; the core never imports this package by name.
"""
