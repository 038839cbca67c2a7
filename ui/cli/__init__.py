"""The `clinrag` command line: argument parsing and printing over ``services``."""
