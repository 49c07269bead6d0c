"""StudyHub's HTTP API (FastAPI): ``create_app()`` in :mod:`studyhub.api.app`."""
