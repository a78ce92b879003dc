"""benchsuite's built-in plugins, loaded through the ``benchsuite`` entry-point group like any other."""
