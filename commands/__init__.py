"""The `roslab` commands, built on the lab, the drivers, the fixtures and the reports."""
