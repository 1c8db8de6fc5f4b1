"""An aiosmtpd server with STARTTLS and AUTH (PLAIN, LOGIN) for scripts/interop.sh.

    python3 aiosmtpd_auth.py PORT CERT KEY USER PASSWORD SECONDS

Requires STARTTLS before AUTH and AUTH before MAIL. Runs for SECONDS (or until SIGTERM), then
prints one line: `accepted N auth_ok N auth_failed N`.
"""
import signal
import ssl
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# aiosmtpd 1.4 warns about its own use of a deprecated attribute on every AUTH.
warnings.filterwarnings("ignore", category=DeprecationWarning)

port, cert, key, user, password, seconds = sys.argv[1:7]
counts = {"accepted": 0, "auth_ok": 0, "auth_failed": 0}


class Handler:
    async def handle_DATA(self, server, session, envelope):
        counts["accepted"] += 1
        return "250 2.0.0 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    counts["auth_ok" if ok else "auth_failed"] += 1
    return AuthResult(success=ok, handled=False)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=int(port),
    authenticator=authenticator,
    auth_require_tls=True,
    require_starttls=True,
    tls_context=context,
)
controller.start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
print("ready", flush=True)
done.wait(float(seconds))
controller.stop()
print(" ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
