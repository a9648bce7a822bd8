"""Command line: one module per command group, registered in main.py. No API calls here."""
