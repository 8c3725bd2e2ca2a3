"""A plugin that fails to import: gradest must skip it with a one-line warning naming it."""

raise ImportError("this plugin needs a package that is not installed")
