"""Writes one page of an analytics conversation-details answer, shaped like Genesys Cloud's
`POST /api/v2/analytics/conversations/details/query` (conversations, each with participants,
sessions, segments and metrics), for `pacer mock --static --static-body`: a benchmark whose
client parses and checks a realistic answer (bench/cores.sh, part d). Deterministic (a fixed
seed), standard library only.

Usage: analytics-page.py CONVERSATIONS OUT_FILE"""

import json
import random
import sys
import uuid
from datetime import datetime, timedelta, timezone

PURPOSES = ["customer", "ivr", "acd", "agent"]
SEGMENTS = ["interact", "hold", "wrapup"]
METRICS = ["tTalk", "tHeld", "tAcw", "tHandle", "nConnected"]


def iso(t):
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def conversation(rng, start):
    def uid():
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    end = start + timedelta(seconds=rng.randint(60, 1800))
    queue = uid()
    participants = []
    for purpose in PURPOSES:
        t = start
        segments = []
        for kind in SEGMENTS[: rng.randint(1, 3)]:
            t2 = t + timedelta(seconds=rng.randint(5, 300))
            segments.append(
                {"segmentStart": iso(t), "segmentEnd": iso(t2), "segmentType": kind,
                 "queueId": queue, "disconnectType": "client" if kind == "wrapup" else None}
            )
            t = t2
        participants.append({
            "participantId": uid(),
            "participantName": f"{purpose}-{rng.randint(1, 500)}",
            "purpose": purpose,
            "sessions": [{
                "mediaType": "voice",
                "sessionId": uid(),
                "ani": f"tel:+1555{rng.randint(1000000, 9999999)}",
                "dnis": f"tel:+1800{rng.randint(1000000, 9999999)}",
                "direction": "inbound",
                "segments": segments,
                "metrics": [{"name": m, "value": rng.randint(1, 600000), "emitDate": iso(end)}
                            for m in METRICS[: rng.randint(2, 5)]],
            }],
        })
    return {
        "conversationId": uid(),
        "conversationStart": iso(start),
        "conversationEnd": iso(end),
        "originatingDirection": "inbound",
        "divisionIds": [uid()],
        "participants": participants,
    }


def main():
    count, out = int(sys.argv[1]), sys.argv[2]
    rng = random.Random(23)
    base = datetime(2026, 12, 1, tzinfo=timezone.utc)
    page = {
        "conversations": [conversation(rng, base + timedelta(minutes=7 * i)) for i in range(count)],
        "totalHits": count * 40,
    }
    with open(out, "w") as f:
        json.dump(page, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
