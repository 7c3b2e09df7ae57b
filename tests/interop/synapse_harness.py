"""Driver side of tests/interop/synapse.sh: talks to the Synapse it started.

Importable by Python interop tests (standard library only; signature checks use `signedjson`,
which Synapse's venv has):

    from synapse_harness import Synapse
    hs = Synapse.from_env_file("/tmp/pulse-interop-synapse/env.json")
    alice = hs.register("alice", "password")   # {"user_id", "access_token", "device_id", ...}
    hs.client("GET", "/_matrix/client/v3/account/whoami", token=alice["access_token"])

Command line (used by synapse.sh):
    synapse_harness.py register ENV_JSON USER PASSWORD [--admin]
    synapse_harness.py selftest ENV_JSON
    synapse_harness.py selftest-federation ENV_JSON_A ENV_JSON_B
"""

import hashlib
import hmac
import json
import ssl
import sys
import time
import urllib.error
import urllib.request


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def _request(method, url, body=None, token=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    # The federation listener's certificate is self-signed.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise HttpError(e.code, e.read().decode(errors="replace")) from None


class Synapse:
    def __init__(self, env):
        self.env = env
        self.server_name = env["SYNAPSE_SERVER_NAME"]
        self.client_url = env["SYNAPSE_CLIENT_URL"]
        self.federation_url = env["SYNAPSE_FEDERATION_URL"]
        self.shared_secret = env["SYNAPSE_SHARED_SECRET"]

    @classmethod
    def from_env_file(cls, path):
        with open(path) as f:
            return cls(json.load(f))

    def client(self, method, path, body=None, token=None):
        return _request(method, self.client_url + path, body, token)

    def federation(self, method, path, body=None):
        """Unauthenticated federation-port requests (version, keys)."""
        return _request(method, self.federation_url + path, body)

    def register(self, localpart, password, admin=False):
        """Shared-secret registration (/_synapse/admin/v1/register, HMAC-SHA1 over
        nonce NUL user NUL password NUL admin|notadmin)."""
        nonce = self.client("GET", "/_synapse/admin/v1/register")["nonce"]
        message = "\x00".join([nonce, localpart, password, "admin" if admin else "notadmin"])
        mac = hmac.new(self.shared_secret.encode(), message.encode(), hashlib.sha1)
        return self.client(
            "POST",
            "/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )


def check_federation_endpoints(hs):
    """The checks `synapse.sh selftest` makes: what a federating Pulse will rely on."""
    version = hs.federation("GET", "/_matrix/federation/v1/version")
    assert version["server"]["name"] == "Synapse", version
    print(f"federation version: {version['server']}")

    keys = hs.federation("GET", "/_matrix/key/v2/server")
    assert keys["server_name"] == hs.server_name, (keys["server_name"], hs.server_name)
    assert keys["verify_keys"], keys
    assert keys["valid_until_ts"] > 0, keys
    key_ids = list(keys["verify_keys"])
    try:
        import signedjson.key
        import signedjson.sign
    except ImportError:
        print("signedjson not available: key signature not checked")
    else:
        for key_id, v in keys["verify_keys"].items():
            verify_key = signedjson.key.decode_verify_key_base64(
                key_id.split(":")[0], key_id.split(":")[1], v["key"]
            )
            signedjson.sign.verify_signed_json(keys, hs.server_name, verify_key)
        print("server key response is signed by its own verify keys")
    print(f"server keys of {keys['server_name']}: {key_ids}, valid_until_ts {keys['valid_until_ts']}")

    versions = hs.client("GET", "/_matrix/client/versions")
    assert versions["versions"], versions


def wait_for(what, fn, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def has_message(hs, token, room_id, body):
    chunk = hs.client(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=20", token=token
    )["chunk"]
    return any(e.get("content", {}).get("body") == body for e in chunk)


def check_federation_between(a, b):
    """A user of b joins a public room on a, and messages go both ways: proves the generated
    config federates over loopback (TLS, self-signed, IP-literal server names)."""
    alice = a.register("alice", "alice-password")
    bob = b.register("bob", "bob-password")
    room_id = a.client(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=alice["access_token"]
    )["room_id"]
    b.client(
        "POST", f"/_matrix/client/v3/join/{room_id}?server_name={a.server_name}", {},
        token=bob["access_token"],
    )
    b.client(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b1",
        {"msgtype": "m.text", "body": "from b"}, token=bob["access_token"],
    )
    a.client(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/a1",
        {"msgtype": "m.text", "body": "from a"}, token=alice["access_token"],
    )
    wait_for("b's message on a", lambda: has_message(a, alice["access_token"], room_id, "from b"))
    wait_for("a's message on b", lambda: has_message(b, bob["access_token"], room_id, "from a"))
    print(f"{bob['user_id']} joined {room_id} on {a.server_name}; messages went both ways")


def main(argv):
    if len(argv) >= 5 and argv[1] == "register":
        hs = Synapse.from_env_file(argv[2])
        out = hs.register(argv[3], argv[4], admin="--admin" in argv[5:])
        print(json.dumps(out, indent=2))
        return 0
    if len(argv) == 3 and argv[1] == "selftest":
        hs = Synapse.from_env_file(argv[2])
        check_federation_endpoints(hs)
        user = hs.register("selftest", "selftest-password")
        who = hs.client("GET", "/_matrix/client/v3/account/whoami", token=user["access_token"])
        assert who["user_id"] == f"@selftest:{hs.server_name}", who
        room = hs.client("POST", "/_matrix/client/v3/createRoom", {}, token=user["access_token"])
        version = hs.client(
            "GET",
            f"/_matrix/client/v3/rooms/{room['room_id']}/state/m.room.create",
            token=user["access_token"],
        ).get("room_version", "1")
        print(f"registered {who['user_id']}; created {room['room_id']} (room version {version})")
        print("selftest: ok")
        return 0
    if len(argv) == 4 and argv[1] == "selftest-federation":
        check_federation_between(Synapse.from_env_file(argv[2]), Synapse.from_env_file(argv[3]))
        print("selftest-federation: ok")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
