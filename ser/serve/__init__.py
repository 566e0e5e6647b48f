"""``ser serve``: a FastAPI app with a page to upload or record a clip and see its emotion."""

from ser.serve.app import create_app

__all__ = ["create_app"]
