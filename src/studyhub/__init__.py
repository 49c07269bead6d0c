"""StudyHub: the study app's data layer, API and the database runbook as tested commands."""

__version__ = "0.1.0"
