// Real end-to-end encryption through Pulse: matrix-js-sdk with its Rust crypto
// (@matrix-org/matrix-sdk-crypto-wasm, initRustCrypto) on two federating Pulse servers.
//   * alice and bob on Pulse A, carol on Pulse B, in an encrypted room of alice's;
//   * each sends a message and each decrypts the other two's (Olm sessions from claimed
//     one-time keys, Megolm room keys as to-device messages, locally and over federation);
//   * alice bootstraps cross-signing, logs in on a new device, verifies it with SAS
//     (to-device verification messages); her first device then signs the new one, which bob
//     (and carol, over federation) see as signed by its owner.
// Usage: node e2ee.mjs PATH_TO_PULSE_BINARY
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import * as sdk from "matrix-js-sdk";
import { CryptoEvent, VerificationPhase, VerifierEvent } from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger as globalLogger } from "matrix-js-sdk/lib/logger.js";

// Parts of the SDK log through its global logger rather than the client's.
globalLogger.setLevel(process.env.E2EE_DEBUG ? "debug" : "silent");
// ... and a few (MatrixRTC) straight to the console: this script reports on stdout itself.
const say = (line) => process.stdout.write(`${line}\n`);
if (!process.env.E2EE_DEBUG) console.log = console.info = console.debug = () => {};

const quiet = {
  trace() {},
  debug() {},
  info() {},
  log() {},
  warn() {},
  error: (...a) => (process.env.E2EE_DEBUG ? console.error(...a) : undefined),
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
  console.error("usage: node e2ee.mjs PULSE_BINARY");
  process.exit(2);
}

let passed = 0;
let failed = 0;
const started = Date.now();
function check(cond, what) {
  const t = ((Date.now() - started) / 1000).toFixed(1);
  if (cond) {
    passed++;
    say(`ok (${t} s): ${what}`);
  } else {
    failed++;
    say(`FAIL (${t} s): ${what}`);
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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `pred` (may be async) until it is truthy; throw after `ms`. */
async function waitUntil(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

const dir = mkdtempSync(join(tmpdir(), "pulse-js-e2ee-"));
const servers = [];
const clients = [];
function cleanup() {
  for (const c of clients) c.stopClient();
  for (const s of servers) s.proc.kill("SIGKILL");
  if (failed === 0) rmSync(dir, { recursive: true, force: true });
  else say(`kept ${dir} (server logs in */pulse.log)`);
}

/** One Pulse named 127.0.0.1:FED (TLS federation listener) with a plain client listener. */
async function startPulse(name) {
  const fed = await freePort();
  const client = await freePort();
  const home = join(dir, name);
  execFileSync("mkdir", ["-p", home]);
  writeFileSync(
    join(home, "pulse.toml"),
    `server_name = "127.0.0.1:${fed}"
data_dir = "${join(home, "data")}"
[[listeners]]
bind = "127.0.0.1:${client}"
[[listeners]]
bind = "127.0.0.1:${fed}"
[listeners.tls]
[registration]
enabled = true
[accounts]
argon2_memory_kib = 8
argon2_iterations = 1
[rate_limits]
enabled = false
[log]
level = "${process.env.E2EE_PULSE_LOG || "warn"}"
[federation]
verify_tls = false
ip_range_allowlist = ["127.0.0.0/8"]
`,
  );
  const { openSync } = await import("node:fs");
  const log = openSync(join(home, "pulse.log"), "w");
  const proc = spawn(binary, ["serve", "--config", join(home, "pulse.toml")], { stdio: ["ignore", log, log] });
  const s = { name: `127.0.0.1:${fed}`, base: `http://127.0.0.1:${client}`, proc };
  servers.push(s);
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      const r = await fetch(`${s.base}/_matrix/client/versions`);
      if (r.ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error(`pulse ${name} did not start`);
    await sleep(50);
  }
  return s;
}

async function api(server, method, path, token, body) {
  const r = await fetch(server.base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

async function makeClient(server, r, password) {
  const client = sdk.createClient({
    baseUrl: server.base,
    userId: r.user_id,
    accessToken: r.access_token,
    deviceId: r.device_id,
    logger: quiet,
  });
  client.password = password;
  client.server = server;
  clients.push(client);
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise((resolve) => {
    const l = (state) => {
      if (state === "PREPARED") {
        client.removeListener(sdk.ClientEvent.Sync, l);
        resolve();
      }
    };
    client.on(sdk.ClientEvent.Sync, l);
  });
  await client.startClient({ initialSyncLimit: 20 });
  await prepared;
  return client;
}

async function register(server, name) {
  const c = sdk.createClient({ baseUrl: server.base, logger: quiet });
  const password = `${name}-password`;
  const r = await c.registerRequest({ username: name, password, auth: { type: "m.login.dummy" } });
  return makeClient(server, r, password);
}

async function login(server, user, password) {
  const c = sdk.createClient({ baseUrl: server.base, logger: quiet });
  const r = await c.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user }, password });
  return makeClient(server, r, password);
}

/** Wait until `client`'s device keys are on its server (the SDK uploads them after start). */
async function keysUploaded(client) {
  await waitUntil(
    async () => {
      const r = await api(client.server, "POST", "/_matrix/client/v3/keys/query", client.getAccessToken(), {
        device_keys: { [client.getUserId()]: [client.getDeviceId()] },
      });
      return r.body.device_keys?.[client.getUserId()]?.[client.getDeviceId()];
    },
    20000,
    `${client.getUserId()}'s device keys`,
  );
}

/** The decrypted body of an `m.room.encrypted` event in `client`'s timeline of `roomId`. */
async function decrypted(client, roomId, body, what) {
  return waitUntil(
    () => {
      const room = client.getRoom(roomId);
      const ev = room
        ?.getLiveTimeline()
        .getEvents()
        .find((e) => e.getWireType() === "m.room.encrypted" && e.getType() === "m.room.message" && e.getContent().body === body);
      return ev && !ev.isDecryptionFailure() ? ev : null;
    },
    30000,
    what,
  );
}

/** Waits for `client` to join `roomId` (as its sync sees it). */
async function joined(client, roomId) {
  await waitUntil(() => client.getRoom(roomId)?.getMyMembership() === "join", 30000, `${client.getUserId()} in the room`);
}

try {
  const a = await startPulse("a");
  const b = await startPulse("b");

  const alice = await register(a, "alice");
  const bob = await register(a, "bob");
  const carol = await register(b, "carol");
  await Promise.all([alice, bob, carol].map(keysUploaded));
  check(true, "alice, bob (Pulse A) and carol (Pulse B) start with Rust crypto and upload device keys");

  const { room_id: roomId } = await alice.createRoom({
    name: "e2ee interop",
    preset: "private_chat",
    invite: [bob.getUserId(), carol.getUserId()],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await waitUntil(() => bob.getRoom(roomId), 20000, "bob's invite");
  await waitUntil(() => carol.getRoom(roomId), 30000, "carol's invite (over federation)");
  await bob.joinRoom(roomId);
  await carol.joinRoom(roomId);
  await Promise.all([alice, bob, carol].map((c) => joined(c, roomId)));
  // Everyone's client must see all three members before the first message, or its room key
  // would not be shared with the late ones.
  for (const c of [alice, bob, carol]) {
    await waitUntil(
      () => c.getRoom(roomId)?.getJoinedMemberCount() === 3,
      30000,
      `${c.getUserId()} sees three members`,
    );
  }
  check(await alice.getCrypto().isEncryptionEnabledInRoom(roomId), "the room is encrypted; bob and carol joined");

  const bodies = {
    alice: "secret from alice",
    bob: "secret from bob",
    carol: "secret from carol, over federation",
  };
  const people = { alice, bob, carol };
  for (const [name, c] of Object.entries(people)) {
    await c.sendTextMessage(roomId, bodies[name]);
  }
  for (const [reader, rc] of Object.entries(people)) {
    for (const [sender, sc] of Object.entries(people)) {
      if (reader === sender) continue;
      const ev = await decrypted(rc, roomId, bodies[sender], `${reader} decrypting ${sender}'s message`);
      check(ev.getSender() === sc.getUserId(), `${reader} decrypts ${sender}'s message`);
    }
  }
  // The ciphertext is all the server holds.
  const raw = await api(a, "GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=20`, bob.getAccessToken());
  const msgs = raw.body.chunk.filter((e) => e.type === "m.room.encrypted");
  check(
    msgs.length >= 3 && !JSON.stringify(raw.body).includes("secret from"),
    `the server stores only ciphertext (${msgs.length} m.room.encrypted events)`,
  );

  // A device that appears later, on the other server: alice's client learns of it through
  // the device-list update Pulse B sends Pulse A, and shares its next room key with it too.
  const carol2 = await login(b, "carol", carol.password);
  await keysUploaded(carol2);
  await waitUntil(
    async () => (await alice.getCrypto().getUserDeviceInfo([carol.getUserId()], false)).get(carol.getUserId())?.has(carol2.getDeviceId()),
    30000,
    "alice's client to learn of carol's new device (m.device_list_update over federation)",
  );
  check(true, "alice's client learns of carol's new device on Pulse B without asking");
  await alice.sendTextMessage(roomId, "for carol's new device too");
  await decrypted(carol2, roomId, "for carol's new device too", "carol's new device decrypting alice's next message");
  check(true, "carol's new device decrypts alice's next message");

  // Cross-signing: alice's first device creates her master, self-signing and user-signing keys.
  const aliceCrypto = alice.getCrypto();
  await aliceCrypto.bootstrapCrossSigning({
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        await makeRequest(null);
      } catch (e) {
        if (e?.httpStatus !== 401) throw e;
        await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: alice.getUserId() },
          password: alice.password,
          session: e.data?.session,
        });
      }
    },
  });
  check(await aliceCrypto.isCrossSigningReady(), "alice bootstraps cross-signing (keys and her device's signature uploaded)");
  // The client learns its own device's new signature from its next /keys/query, which it makes
  // when /sync lists alice in device_lists.changed: eventually, not at once.
  const own = await waitUntil(
    async () => {
      const st = await aliceCrypto.getDeviceVerificationStatus(alice.getUserId(), alice.getDeviceId());
      return st?.crossSigningVerified ? st : null;
    },
    20000,
    "alice's first device to show as cross-signed",
  ).catch(() => null);
  check(own?.crossSigningVerified, "alice's first device is cross-signed");

  // A new device of alice's, verified with SAS over to-device messages.
  const alice2 = await login(a, "alice", alice.password);
  await keysUploaded(alice2);
  const before = await aliceCrypto.getDeviceVerificationStatus(alice.getUserId(), alice2.getDeviceId()).catch(() => null);
  await waitUntil(
    async () => (await aliceCrypto.getUserDeviceInfo([alice.getUserId()], true)).get(alice.getUserId())?.has(alice2.getDeviceId()),
    20000,
    "alice's first device to see the new one",
  );
  check(!before?.crossSigningVerified, "the new device is not trusted before verification");

  // The request goes from the new device to the first one, as to-device messages.
  const incoming = new Promise((resolve) => alice.once(CryptoEvent.VerificationRequestReceived, resolve));
  const request = await alice2.getCrypto().requestOwnUserVerification();
  const other = await Promise.race([
    incoming,
    sleep(20000).then(() => {
      throw new Error("no verification request on alice's first device");
    }),
  ]);
  await other.accept();
  await waitUntil(() => request.phase === VerificationPhase.Ready, 20000, "the request to be ready");
  const verifier = await request.startVerification("m.sas.v1");
  await waitUntil(() => other.verifier, 20000, "the first device's verifier");
  const sasShown = (v) =>
    new Promise((resolve) => {
      const cb = v.getShowSasCallbacks();
      if (cb) resolve(cb);
      else v.once(VerifierEvent.ShowSas, resolve);
    });
  const mine = verifier.verify();
  const otherDone = other.verifier.verify();
  const [s1, s2] = await Promise.all([sasShown(verifier), sasShown(other.verifier)]);
  const emoji = (s) => s.sas.emoji.map((e) => e[0]).join("");
  check(emoji(s1) === emoji(s2) && s1.sas.emoji.length === 7, `both devices show the same SAS (${emoji(s1)})`);
  await Promise.all([s1.confirm(), s2.confirm()]);
  await Promise.all([mine, otherDone]);
  check(request.phase === VerificationPhase.Done, "SAS verification is done");

  const status = await waitUntil(
    async () => {
      const s = await aliceCrypto.getDeviceVerificationStatus(alice.getUserId(), alice2.getDeviceId());
      return s?.crossSigningVerified ? s : null;
    },
    20000,
    "alice's first device to cross-sign the new one",
  );
  check(status.crossSigningVerified, "alice's first device trusts the new device through cross-signing");
  for (const [name, c] of [
    ["bob", bob],
    ["carol", carol],
  ]) {
    const s = await waitUntil(
      async () => {
        await c.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
        const s = await c.getCrypto().getDeviceVerificationStatus(alice.getUserId(), alice2.getDeviceId());
        return s?.signedByOwner ? s : null;
      },
      30000,
      `${name} to see alice's new device signed by her`,
    );
    check(s.signedByOwner, `${name} sees alice's new device signed by alice's self-signing key`);
  }

  // The new device can read what is sent from now on.
  await bob.sendTextMessage(roomId, "after the new device");
  await decrypted(alice2, roomId, "after the new device", "alice's new device decrypting bob's message");
  check(true, "alice's new device decrypts bob's next message");
} catch (e) {
  check(false, `${e?.stack || e}`);
} finally {
  cleanup();
}
say(`js-sdk e2ee interop: ${passed} passed, ${failed} failed, ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(failed === 0 ? 0 : 1);
