#!/usr/bin/env python3
"""A workerpool job in Python: answers every request with its body in upper
case; a body that is not UTF-8 text gets an error reply.

    groups:
      - name: upper
        type: job
        processes: 2
        command: [python3, /path/to/src/examples/python_job.py]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "python"))
import workerpool  # noqa: E402


def handler(body, meta):
    return body.decode("utf-8").upper()  # UnicodeDecodeError -> error reply


if __name__ == "__main__":
    sys.exit(workerpool.serve(handler))
