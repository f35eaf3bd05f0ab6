"""``TRACENET_DEBUG=ir,fusion,c,cache,time``: comma-separated topics printed to stderr."""
import os
import sys

TOPICS = ("ir", "fusion", "c", "cache", "time", "compile")


def enabled(topic):
    raw = os.environ.get("TRACENET_DEBUG", "")
    if not raw:
        return False
    topics = {t.strip() for t in raw.split(",")}
    return topic in topics or "all" in topics


def log(topic, message):
    if enabled(topic):
        for line in str(message).splitlines() or [""]:
            print(f"[tracenet:{topic}] {line}", file=sys.stderr)
