#!/usr/bin/python3
"""An independent DKIM check (Debian's python3-dkim, dkimpy) of messages dumped by volley sink.

    /usr/bin/python3 scripts/peers/dkim_verify.py DUMP_DIR NAME=TXT [NAME=TXT ...]

Every `.msg` file (envelope, blank line, content) must carry as many DKIM-Signature headers as
records given, and dkimpy must verify each one with the TXT records given here instead of DNS.
A copy of each message with one body byte changed must fail. Prints a summary; exits 1 on any
failure.
"""
import pathlib
import sys

import dkim

records = {}
for arg in sys.argv[2:]:
    name, txt = arg.split("=", 1)
    records[(name.rstrip(".") + ".").encode()] = txt.encode()


def dns(name, timeout=5):
    return records.get(name if name.endswith(b".") else name + b".")


def verify_one(d, i):
    try:
        return d.verify(idx=i, dnsfunc=dns)
    except dkim.ValidationError as e:  # a body hash mismatch is raised, not returned
        return False


def verify_all(content):
    d = dkim.DKIM(content)
    count = content.count(b"\nDKIM-Signature:") + content.startswith(b"DKIM-Signature:")
    return count, [verify_one(d, i) for i in range(count)]


files = sorted(pathlib.Path(sys.argv[1]).glob("*.msg"))
bad = []
for f in files:
    content = f.read_bytes().split(b"\r\n\r\n", 1)[1]
    count, results = verify_all(content)
    if count != len(records) or not all(results):
        bad.append(f"{f.name}: {count} signatures, results {results}")
        continue
    head, body = content.split(b"\r\n\r\n", 1)
    tampered = head + b"\r\n\r\n" + body.replace(b"Dear", b"Deer", 1)
    if any(verify_all(tampered)[1]):
        bad.append(f"{f.name}: a tampered copy still verifies")
if not files:
    bad.append("no messages dumped")
print(f"dkimpy: {len(files) - len(bad)} of {len(files)} "
      f"messages verified ({len(records)} signatures each), tampered copies failed")
for b in bad[:10]:
    print("  FAIL", b)
sys.exit(1 if bad else 0)
