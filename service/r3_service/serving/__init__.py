"""Ways to run the service beyond one process: Ray Serve (``ray_app``, the ``ray`` extra)."""
