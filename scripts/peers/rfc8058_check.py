#!/usr/bin/python3
"""Checks the RFC 8058 one-click unsubscribe headers of messages dumped by volley sink, with
Python's own email parser (not volley's code):

    /usr/bin/python3 scripts/peers/rfc8058_check.py DUMP_DIR VOLLEY_BINARY

Each message must have exactly one List-Unsubscribe holding an https URI in angle brackets,
exactly one `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and a DKIM-Signature whose h=
covers both (RFC 8058 section 4). The URI's last path segment is the token:
`VOLLEY token verify --json` (secret from $VOLLEY_UNSUBSCRIBE_SECRET) must resolve it to the
message's envelope recipient. Exits 1 on any failure.
"""
import email
import email.policy
import json
import pathlib
import re
import subprocess
import sys

volley = sys.argv[2]
files = sorted(pathlib.Path(sys.argv[1]).glob("*.msg"))
bad = []
for f in files:
    envelope, content = f.read_bytes().split(b"\r\n\r\n", 1)
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    unsub = msg.get_all("List-Unsubscribe") or []
    post = msg.get_all("List-Unsubscribe-Post") or []
    if len(unsub) != 1 or len(post) != 1 or post[0].strip() != "List-Unsubscribe=One-Click":
        bad.append(f"{f.name}: List-Unsubscribe {unsub}, -Post {post}")
        continue
    uris = re.findall(r"<([^>]*)>", " ".join(unsub[0].split()))
    https = [u for u in uris if u.lower().startswith("https://")]
    if len(https) != 1:
        bad.append(f"{f.name}: not one https URI in {unsub[0]!r}")
        continue
    signed = all(
        {"list-unsubscribe", "list-unsubscribe-post"}
        <= {h.strip().lower() for h in re.search(r"h=([^;]*)", " ".join(s.split())).group(1).split(":")}
        for s in msg.get_all("DKIM-Signature") or ["h="]
    )
    if not signed:
        bad.append(f"{f.name}: a DKIM signature does not cover both unsubscribe headers")
        continue
    token = https[0].rstrip("/").rsplit("/", 1)[1]
    out = subprocess.run([volley, "token", "verify", "--json", token], capture_output=True, text=True)
    verdict = json.loads(out.stdout or "{}")
    recipient = verdict.get("recipient", "")
    if out.returncode != 0 or f"<{recipient}>".encode() not in envelope:
        bad.append(f"{f.name}: token verify said {out.stdout.strip()} {out.stderr.strip()}")
if not files:
    bad.append("no messages dumped")
print(f"rfc8058: {len(files) - len(bad)} of {len(files)} messages carry one-click headers, signed, "
      "with a token that names their recipient")
for b in bad[:10]:
    print("  FAIL", b)
sys.exit(1 if bad else 0)
