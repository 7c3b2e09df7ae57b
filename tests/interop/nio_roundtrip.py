"""matrix-nio against a real Pulse: the basic life of a chat, user directory and message
search, plus a kill -9 restart."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from nio import (AsyncClient, JoinResponse, ProfileSetDisplayNameResponse, RegisterResponse,
                 RoomCreateResponse, RoomInviteResponse, RoomMessagesResponse, RoomSendResponse, SyncResponse)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, config):
    proc = subprocess.Popen([binary, "serve", "--config", config])
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(BASE + "/_matrix/client/versions", timeout=1)
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("pulse did not start")


async def post_json(client, path, body):
    """A raw authenticated POST through nio's own HTTP session (nio has no directory or
    search call)."""
    resp = await client.send("POST", path, json.dumps(body), headers={
        "Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"})
    return resp.status, await resp.json()


async def directory_search(client, term):
    return await post_json(client, "/_matrix/client/v3/user_directory/search",
                           {"search_term": term, "limit": 5})


async def message_search(client, term):
    return await post_json(client, "/_matrix/client/v3/search",
                           {"search_categories": {"room_events": {"search_term": term}}})


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what[:2000]}")
    print(f"ok: {what[:100]}")


async def scenario():
    alice = AsyncClient(BASE, "alice")
    bob = AsyncClient(BASE, "bob")
    r = await alice.register("alice", "alice-password")
    check(isinstance(r, RegisterResponse), f"alice registers ({r})")
    r = await bob.register("bob", "bob-password")
    check(isinstance(r, RegisterResponse), f"bob registers ({r})")

    r = await alice.room_create(name="interop")
    check(isinstance(r, RoomCreateResponse), f"alice creates a room ({r})")
    room_id = r.room_id
    r = await alice.room_invite(room_id, bob.user_id)
    check(isinstance(r, RoomInviteResponse), f"alice invites bob ({r})")

    r = await bob.sync(timeout=0)
    check(isinstance(r, SyncResponse) and room_id in r.rooms.invite, "bob's sync shows the invite")
    r = await bob.join(room_id)
    check(isinstance(r, JoinResponse), f"bob joins ({r})")
    r = await bob.sync(timeout=0)
    check(isinstance(r, SyncResponse) and room_id in r.rooms.join, "bob's sync shows the joined room")

    # bob long-polls; alice sends while he waits.
    waiting = asyncio.ensure_future(bob.sync(timeout=10000, since=bob.next_batch))
    await asyncio.sleep(0.3)
    r = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello bob"})
    check(isinstance(r, RoomSendResponse), f"alice sends ({r})")
    started = time.time()
    r = await waiting
    took = time.time() - started
    check(isinstance(r, SyncResponse), "bob's long-poll returns")
    bodies = [getattr(e, "body", None) for e in r.rooms.join[room_id].timeline.events] if room_id in r.rooms.join else []
    check("hello bob" in bodies, f"bob's sync has the message ({bodies})")
    check(took < 5, f"the long-poll returned promptly ({took * 1000:.0f} ms after the send)")

    # The user directory: bob finds alice (they share the room) under her new name.
    r = await alice.set_displayname("Alice Interop")
    check(isinstance(r, ProfileSetDisplayNameResponse), f"alice sets a display name ({r})")
    status, body = await directory_search(bob, "alice inter")
    found = [(u.get("user_id"), u.get("display_name")) for u in body.get("results", [])]
    check(status == 200 and found == [(alice.user_id, "Alice Interop")],
          f"bob finds alice in the user directory ({status} {body})")
    check(body.get("limited") is False, "the directory answer is not limited")
    status, body = await directory_search(bob, "nobody-like-this")
    check(status == 200 and body.get("results") == [], f"an unknown name finds nobody ({body})")
    # Message search finds what alice sent.
    status, body = await message_search(bob, "hello")
    results = body.get("search_categories", {}).get("room_events", {}).get("results", [])
    check(status == 200 and [x["result"]["content"]["body"] for x in results] == ["hello bob"],
          f"bob finds the message with /search ({status} {body})")
    await alice.close()
    await bob.close()
    return room_id


async def after_restart(room_id):
    bob = AsyncClient(BASE, "bob")
    r = await bob.login("bob-password")
    check(hasattr(r, "access_token"), f"bob logs in after the restart ({r})")
    r = await bob.room_messages(room_id, start="", limit=20)
    check(isinstance(r, RoomMessagesResponse), f"history readable after restart ({r})")
    bodies = [getattr(e, "body", None) for e in r.chunk]
    check("hello bob" in bodies, f"the message survived kill -9 ({bodies})")
    status, body = await directory_search(bob, "Alice")
    check(status == 200 and [u.get("display_name") for u in body.get("results", [])] == ["Alice Interop"],
          f"the user directory is rebuilt after the restart ({body})")
    status, body = await message_search(bob, "bob")
    results = body.get("search_categories", {}).get("room_events", {}).get("results", [])
    check(status == 200 and len(results) == 1, f"the search index survived kill -9 ({body})")
    await bob.close()


def main():
    global BASE
    binary = sys.argv[1]
    port = free_port()
    BASE = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "pulse.toml")
        with open(config, "w") as f:
            f.write(f'server_name = "localhost"\ndata_dir = "{d}/data"\n'
                    f'[[listeners]]\nbind = "127.0.0.1:{port}"\n'
                    '[accounts]\nargon2_memory_kib = 8\nargon2_iterations = 1\n'
                    '[rate_limits]\nenabled = false\n[log]\nlevel = "warn"\n')
        proc = start(binary, config)
        try:
            room_id = asyncio.run(scenario())
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start(binary, config)
            asyncio.run(after_restart(room_id))
        finally:
            proc.kill()
            proc.wait()
    print("interop: all checks passed")


if __name__ == "__main__":
    main()
