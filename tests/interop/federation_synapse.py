"""Pulse <-> Synapse federation on loopback (issue 16's interop test), driven by
tests/interop/federation-synapse.sh, which starts both servers and passes their env.json files.

    federation_synapse.py PULSE_ENV_JSON SYNAPSE_ENV_JSON

Checks, in order, stopping at the first failure:
  1. Pulse's /_matrix/federation/v1/version and /_matrix/key/v2/server (signed by its own key);
  2. a Pulse user joins a public room on Synapse (Pulse's make_join/send_join);
  3. a Synapse user joins a public room on Pulse (Synapse's make_join/send_join against Pulse);
  4. messages both ways in the Synapse room; 5. messages both ways in the Pulse room.
"""

import sys
import time

from synapse_harness import Synapse, has_message, wait_for


def step(name):
    print(f"== {name}", flush=True)


def check_keys(pulse):
    version = pulse.federation("GET", "/_matrix/federation/v1/version")
    print(f"Pulse federation version: {version.get('server')}")
    keys = pulse.federation("GET", "/_matrix/key/v2/server")
    assert keys.get("server_name") == pulse.server_name, keys
    import signedjson.key
    import signedjson.sign

    for key_id, v in keys["verify_keys"].items():
        algorithm, version_id = key_id.split(":", 1)
        verify_key = signedjson.key.decode_verify_key_base64(algorithm, version_id, v["key"])
        signedjson.sign.verify_signed_json(keys, pulse.server_name, verify_key)
    print(f"Pulse server keys {list(keys['verify_keys'])} verify")


def join(home, home_user, guest, guest_user):
    """guest_user (on guest) joins a public room home_user made on home; returns the room."""
    room_id = home.client(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
        token=home_user["access_token"],
    )["room_id"]
    started = time.monotonic()
    guest.client(
        "POST", f"/_matrix/client/v3/join/{room_id}?server_name={home.server_name}", {},
        token=guest_user["access_token"],
    )
    print(f"{guest_user['user_id']} joined {room_id} in {time.monotonic() - started:.1f} s")
    members = home.client(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members",
        token=home_user["access_token"],
    )["joined"]
    assert guest_user["user_id"] in members, f"the room's server does not list the guest: {members}"
    print("the room's server lists the guest as joined")
    return room_id


def talk(home, home_user, guest, guest_user, room_id, label):
    """Messages both ways in a room both users are joined to."""
    guest.client(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{label}-g",
        {"msgtype": "m.text", "body": f"{label}: from the guest"}, token=guest_user["access_token"],
    )
    home.client(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{label}-h",
        {"msgtype": "m.text", "body": f"{label}: from the home server"},
        token=home_user["access_token"],
    )
    wait_for("the guest's message on the room's server",
             lambda: has_message(home, home_user["access_token"], room_id, f"{label}: from the guest"))
    wait_for("the home server's message on the guest's server",
             lambda: has_message(guest, guest_user["access_token"], room_id,
                                 f"{label}: from the home server"))
    print("messages arrived both ways")


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    pulse = Synapse.from_env_file(argv[1])  # the same shape of env.json; the same admin API
    synapse = Synapse.from_env_file(argv[2])

    step("1. Pulse's federation endpoints")
    check_keys(pulse)
    p_alice = pulse.register("alice", "alice-password")
    s_bob = synapse.register("bob", "bob-password")

    step("2. a Pulse user joins a Synapse room")
    synapse_room = join(synapse, s_bob, pulse, p_alice)

    step("3. a Synapse user joins a Pulse room")
    pulse_room = join(pulse, p_alice, synapse, s_bob)

    step("4. messages both ways in the Synapse room")
    talk(synapse, s_bob, pulse, p_alice, synapse_room, "synapse-room")

    step("5. messages both ways in the Pulse room")
    talk(pulse, p_alice, synapse, s_bob, pulse_room, "pulse-room")

    print("federation with Synapse: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
