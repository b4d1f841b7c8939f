"""The clinic web app (FastAPI): segments, the audience builder and work-list boards."""
