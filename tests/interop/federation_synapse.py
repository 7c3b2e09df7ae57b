"""Pulse <-> Synapse federation on loopback (issue 16's interop test), driven by
tests/interop/federation-synapse.sh, which starts both servers and passes their env.json files.

    federation_synapse.py PULSE_ENV_JSON SYNAPSE_ENV_JSON

Checks, in order, stopping at the first failure:
  1. Pulse's /_matrix/federation/v1/version and /_matrix/key/v2/server (signed by its own key);
then, for rooms of each server's DEFAULT room version (/capabilities; Pulse's must be 12, as
Synapse 1.163's), and
again for rooms of version 10 (the last version with `!x:server` room IDs):
  2. a Pulse user joins a public room on Synapse (Pulse's make_join/send_join);
  3. a Synapse user joins a public room on Pulse (Synapse's make_join/send_join against Pulse);
  4. messages both ways in the Synapse room; 5. messages both ways in the Pulse room;
  6. a Pulse user invites a Synapse user to a private Pulse room: accepted, and rejected;
  7. a Synapse user invites a Pulse user to a private Synapse room: accepted, and rejected;
  8. the Synapse user kicks, then bans, the Pulse user from the Synapse room (the Pulse user
     rejoins in between; once banned, their join is refused);
  9. the Pulse user kicks, then bans, the Synapse user from the Pulse room (the same).
"""

import json
import sys
import time
import urllib.parse

from synapse_harness import HttpError, Synapse, has_message, wait_for


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


def create_room(home, home_user, preset, version):
    """A room home_user makes on home, of `version` (None: home's default)."""
    body = {"preset": preset}
    if version is not None:
        body["room_version"] = version
    room_id = home.client(
        "POST", "/_matrix/client/v3/createRoom", body, token=home_user["access_token"],
    )["room_id"]
    create = home.client(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.create/",
        token=home_user["access_token"],
    )
    made = create.get("room_version", "1")
    expected = version or default_version(home, home_user)
    assert made == expected, f"{room_id} is version {made}, expected {expected}"
    return room_id


def default_version(hs, user):
    caps = hs.client("GET", "/_matrix/client/v3/capabilities", token=user["access_token"])
    return caps["capabilities"]["m.room_versions"]["default"]


def join(home, home_user, guest, guest_user, version):
    """guest_user (on guest) joins a public room home_user made on home; returns the room."""
    room_id = create_room(home, home_user, "public_chat", version)
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


_sync_calls = 0


def invited(hs, user):
    # Synapse caches the answer of an identical /sync request for 2 minutes
    # (sync_response_cache_duration): a filter that differs each time defeats the cache.
    global _sync_calls
    _sync_calls += 1
    filt = urllib.parse.quote(json.dumps({"room": {"timeline": {"limit": _sync_calls}}}))
    sync = hs.client("GET", f"/_matrix/client/v3/sync?timeout=0&filter={filt}",
                     token=user["access_token"])
    return list(sync.get("rooms", {}).get("invite", {}))


def membership(hs, viewer, room_id, user_id):
    state = hs.client(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{user_id}",
        token=viewer["access_token"],
    )
    return state.get("membership")


def invite_accept_reject(home, home_user, guest, guest_user, version):
    """home_user invites guest_user to a private room twice: accepted once, rejected once."""
    for accept in (True, False):
        room_id = create_room(home, home_user, "private_chat", version)
        home.client(
            "POST", f"/_matrix/client/v3/rooms/{room_id}/invite",
            {"user_id": guest_user["user_id"]}, token=home_user["access_token"],
        )
        wait_for("the invite on the invitee's server", lambda: room_id in invited(guest, guest_user))
        if accept:
            guest.client("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {},
                         token=guest_user["access_token"])
            wait_for("the accepted invite on the inviter's server",
                     lambda: membership(home, home_user, room_id, guest_user["user_id"]) == "join")
            print(f"{guest_user['user_id']} accepted an invite to {room_id}")
        else:
            guest.client("POST", f"/_matrix/client/v3/rooms/{room_id}/leave", {},
                         token=guest_user["access_token"])
            wait_for("the rejected invite on the inviter's server",
                     lambda: membership(home, home_user, room_id, guest_user["user_id"]) == "leave")
            assert room_id not in invited(guest, guest_user)
            print(f"{guest_user['user_id']} rejected an invite to {room_id}")


def joined_rooms(hs, user):
    return hs.client("GET", "/_matrix/client/v3/joined_rooms",
                     token=user["access_token"]).get("joined_rooms", [])


def guest_join(home, guest, guest_user, room_id):
    guest.client(
        "POST", f"/_matrix/client/v3/join/{room_id}?server_name={home.server_name}", {},
        token=guest_user["access_token"],
    )


def kick_and_ban(home, home_user, guest, guest_user, room_id):
    """home_user kicks guest_user (joined to room_id), who rejoins and is then banned."""
    home.client(
        "POST", f"/_matrix/client/v3/rooms/{room_id}/kick",
        {"user_id": guest_user["user_id"], "reason": "interop kick"},
        token=home_user["access_token"],
    )
    assert membership(home, home_user, room_id, guest_user["user_id"]) == "leave"
    wait_for("the kick on the guest's server",
             lambda: room_id not in joined_rooms(guest, guest_user))
    print(f"{guest_user['user_id']} kicked from {room_id}, and their server knows")
    guest_join(home, guest, guest_user, room_id)
    wait_for("the rejoin on the room's server",
             lambda: membership(home, home_user, room_id, guest_user["user_id"]) == "join")
    home.client(
        "POST", f"/_matrix/client/v3/rooms/{room_id}/ban",
        {"user_id": guest_user["user_id"], "reason": "interop ban"},
        token=home_user["access_token"],
    )
    assert membership(home, home_user, room_id, guest_user["user_id"]) == "ban"
    wait_for("the ban on the guest's server",
             lambda: room_id not in joined_rooms(guest, guest_user))
    try:
        guest_join(home, guest, guest_user, room_id)
    except HttpError as e:
        assert e.status == 403, f"a banned user's join: {e.status} {e.body}"
    else:
        raise AssertionError("a banned user joined again")
    assert membership(home, home_user, room_id, guest_user["user_id"]) == "ban"
    print(f"{guest_user['user_id']} banned from {room_id}; their join is refused")


def suite(pulse, synapse, p_alice, s_bob, version):
    label = f"v{version}" if version else "default-version"

    step(f"2. [{label}] a Pulse user joins a Synapse room")
    synapse_room = join(synapse, s_bob, pulse, p_alice, version)

    step(f"3. [{label}] a Synapse user joins a Pulse room")
    pulse_room = join(pulse, p_alice, synapse, s_bob, version)

    step(f"4. [{label}] messages both ways in the Synapse room")
    talk(synapse, s_bob, pulse, p_alice, synapse_room, f"synapse-room-{label}")

    step(f"5. [{label}] messages both ways in the Pulse room")
    talk(pulse, p_alice, synapse, s_bob, pulse_room, f"pulse-room-{label}")

    step(f"6. [{label}] a Pulse user invites a Synapse user (accepted, then rejected)")
    invite_accept_reject(pulse, p_alice, synapse, s_bob, version)

    step(f"7. [{label}] a Synapse user invites a Pulse user (accepted, then rejected)")
    invite_accept_reject(synapse, s_bob, pulse, p_alice, version)

    step(f"8. [{label}] the Synapse user kicks and bans the Pulse user")
    kick_and_ban(synapse, s_bob, pulse, p_alice, synapse_room)

    step(f"9. [{label}] the Pulse user kicks and bans the Synapse user")
    kick_and_ban(pulse, p_alice, synapse, s_bob, pulse_room)


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

    defaults = (default_version(pulse, p_alice), default_version(synapse, s_bob))
    print(f"default room versions: Pulse {defaults[0]}, Synapse {defaults[1]}")
    assert defaults[0] == "12", "Pulse creates room version 12 by default (as Synapse 1.163)"
    # Both servers' default, then version 10.
    for version in (None, "10"):
        suite(pulse, synapse, p_alice, s_bob, version)

    print("federation with Synapse: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
