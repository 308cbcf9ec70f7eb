"""``python -m r3_service`` is ``r3-serve``."""

from r3_service.cli import serve_main

if __name__ == "__main__":
    serve_main()
