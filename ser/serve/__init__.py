"""``ser serve``: a FastAPI app with a page to upload or record a clip and see its emotion,
answered by a pool of predictor processes (see ``ser.serve.pool``)."""

__all__ = ["create_app"]


def __getattr__(name: str):
    # Lazy, so a predictor process (which imports ser.serve.workers) does not load the web stack.
    if name == "create_app":
        from ser.serve.app import create_app

        return create_app
    raise AttributeError(name)
