"""The ``novacron`` command line: parser, commands, output helpers."""
