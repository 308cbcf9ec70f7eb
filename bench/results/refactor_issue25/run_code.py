import os
import runpy
import sys

code = os.environ.get("R3_CODE")
if code:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
    sys.path.insert(0, code)
runpy.run_module("r3_service", run_name="__main__", alter_sys=True)
