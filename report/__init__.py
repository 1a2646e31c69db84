"""The paper report: every artifact of the STIP paper, its printed values beside what this host measured.

It meets the runner (bench/) only through the files under results/ (protocols.results_schema); neither imports
the other (import-linter contract in pyproject.toml).
"""
