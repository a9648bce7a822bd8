"""From a Config to ordered actions: desired bodies (desired.py), field-level diffs (diff.py), and
the steps that read what exists and decide create / update / nothing (steps.py)."""
