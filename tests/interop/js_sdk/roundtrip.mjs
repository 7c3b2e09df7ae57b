// matrix-js-sdk against a real Pulse, doing what Element does at start and in a chat:
// startClient reaches PREPARED (versions, capabilities, push rules, filter, sync), create a
// room, invite, join, send, receive on the second client (with an unread count from the
// push rules), set and read presence, upload and download a file. Usage: node roundtrip.mjs PATH_TO_PULSE_BINARY
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import * as sdk from "matrix-js-sdk";
// The SDK logs every sync step at debug level: keep warnings and errors only.
const quiet = {
  trace() {},
  debug() {},
  info() {},
  log() {},
  warn: (...a) => console.warn(...a),
  error: (...a) => console.error(...a),
  getChild: () => quiet,
};

// matrix-js-sdk 43 asks for Node 22; Debian's Node 20 lacks only this (ES2024) helper.
Promise.withResolvers ??= function withResolvers() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
};

const binary = process.argv[2];
if (!binary) {
  console.error("usage: node roundtrip.mjs PULSE_BINARY");
  process.exit(2);
}

let passed = 0;
let failed = 0;
function check(cond, what) {
  if (cond) {
    passed++;
    console.log(`ok: ${what}`);
  } else {
    failed++;
    console.log(`FAIL: ${what}`);
  }
  return cond;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Resolve when `pred` holds, checked on each `event` of `emitter`; reject after `ms`. */
function waitFor(emitter, event, pred, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, listener);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    function listener(...args) {
      if (pred(...args)) {
        clearTimeout(timer);
        emitter.removeListener(event, listener);
        resolve(args);
      }
    }
    emitter.on(event, listener);
  });
}

const dir = mkdtempSync(join(tmpdir(), "pulse-js-sdk-"));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
writeFileSync(
  join(dir, "pulse.toml"),
  `server_name = "localhost"
data_dir = "${join(dir, "data")}"
[[listeners]]
bind = "127.0.0.1:${port}"
[registration]
enabled = true
[accounts]
argon2_memory_kib = 8
argon2_iterations = 1
[rate_limits]
enabled = false
[log]
level = "warn"
[federation]
enabled = false
`,
);
const pulse = spawn(binary, ["serve", "--config", join(dir, "pulse.toml")], { stdio: "inherit" });
const clients = [];
function cleanup() {
  for (const c of clients) c.stopClient();
  pulse.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
}

try {
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      const r = await fetch(`${base}/_matrix/client/versions`);
      if (r.ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error("pulse did not start");
    await new Promise((r) => setTimeout(r, 50));
  }

  async function register(name) {
    const c = sdk.createClient({ baseUrl: base, logger: quiet });
    const r = await c.registerRequest({
      username: name,
      password: `${name}-password`,
      auth: { type: "m.login.dummy" },
    });
    const client = sdk.createClient({
      baseUrl: base,
      userId: r.user_id,
      accessToken: r.access_token,
      deviceId: r.device_id,
      logger: quiet,
    });
    clients.push(client);
    return client;
  }

  async function start(client) {
    const prepared = waitFor(client, sdk.ClientEvent.Sync, (state) => state === "PREPARED", 20000, "PREPARED");
    await client.startClient({ initialSyncLimit: 10 });
    await prepared;
  }

  const alice = await register("alice");
  const bob = await register("bob");
  await start(alice);
  check(true, "alice's startClient reaches PREPARED");
  check(
    Array.isArray(alice.pushRules?.global?.override) &&
      alice.pushRules.global.override.some((r) => r.rule_id === ".m.rule.master"),
    "alice's client has the server-default push rules",
  );
  await start(bob);
  check(true, "bob's startClient reaches PREPARED");

  const { room_id: roomId } = await alice.createRoom({ name: "js-sdk interop", preset: "private_chat" });
  check(roomId.startsWith("!"), `alice creates a room (${roomId})`);
  const invited = waitFor(bob, sdk.RoomEvent.MyMembership, (room, m) => room.roomId === roomId && m === "invite", 15000, "bob's invite");
  await alice.invite(roomId, bob.getUserId());
  await invited;
  check(true, "bob's client sees the invite");
  const joined = waitFor(bob, sdk.RoomEvent.MyMembership, (room, m) => room.roomId === roomId && m === "join", 15000, "bob's join");
  await bob.joinRoom(roomId);
  await joined;
  check(bob.getRoom(roomId)?.getMyMembership() === "join", "bob joins");

  const received = waitFor(
    bob,
    sdk.RoomEvent.Timeline,
    (ev, room) => room?.roomId === roomId && ev.getType() === "m.room.message" && ev.getContent().body === "hello from js-sdk",
    15000,
    "the message on bob's client",
  );
  await alice.sendTextMessage(roomId, "hello from js-sdk");
  const [ev] = await received;
  check(ev.getSender() === alice.getUserId(), "bob's client receives alice's message");
  // The push rules' count arrives with the same or a following sync.
  const room = bob.getRoom(roomId);
  const total = () => room.getUnreadNotificationCount(sdk.NotificationCountType.Total);
  if (total() === 0) {
    await waitFor(bob, sdk.ClientEvent.Sync, () => total() > 0, 10000, "an unread count").catch(() => {});
  }
  check(total() === 1, `bob's client shows 1 unread notification (${total()})`);

  await alice.setPresence({ presence: "online", status_msg: "testing Pulse" });
  const p = await bob.getPresence(alice.getUserId());
  check(p.presence === "online" && p.status_msg === "testing Pulse", `bob reads alice's presence (${JSON.stringify(p)})`);
  const user = bob.getUser(alice.getUserId());
  if (user?.presenceStatusMsg !== "testing Pulse") {
    await waitFor(bob, sdk.UserEvent.Presence, (_e, u) => u.userId === alice.getUserId() && u.presenceStatusMsg === "testing Pulse", 15000, "presence on bob's client").catch(() => {});
  }
  check(bob.getUser(alice.getUserId())?.presenceStatusMsg === "testing Pulse", "bob's client sees alice's presence through sync");

  // Media, as Element sends an attachment: config, upload, then download through the
  // authenticated URL the SDK builds.
  const config = await alice.getMediaConfig(true);
  check(config["m.upload.size"] > 0, `the media config has an upload limit (${config["m.upload.size"]})`);
  const payload = new Blob(["attachment from js-sdk"], { type: "text/plain" });
  const { content_uri: mxc } = await alice.uploadContent(payload, { name: "note.txt", type: "text/plain" });
  check(mxc?.startsWith("mxc://localhost/"), `alice uploads a file (${mxc})`);
  const url = bob.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${bob.getAccessToken()}` } });
  check(resp.ok && (await resp.text()) === "attachment from js-sdk", `bob downloads it (${url})`);
} catch (e) {
  check(false, `${e?.stack || e}`);
} finally {
  cleanup();
}
console.log(`js-sdk interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
