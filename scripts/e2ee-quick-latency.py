#!/usr/bin/env python3
# Usage: start a debug pulse on 127.0.0.1:25010 (registration on, rate limits off), then run this.
# Quick latency numbers for the e2ee endpoints on a debug build (one client, sequential).
import requests, time, json, statistics
B = "http://127.0.0.1:25010/_matrix/client/v3"
s = requests.Session()
def reg(name):
    r = s.post(B + "/register", json={"username": name, "password": "p", "auth": {"type": "m.login.dummy"}}).json()
    return r
a, b = reg("alice"), reg("bob")
H = lambda u: {"Authorization": "Bearer " + u["access_token"]}
def dk(u):
    d = u["device_id"]
    return {"user_id": u["user_id"], "device_id": d, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {"curve25519:" + d: "c", "ed25519:" + d: "e"}, "signatures": {u["user_id"]: {"ed25519:" + d: "s"}}}
def timed(n, f):
    ts = []
    for i in range(n):
        t = time.perf_counter(); f(i); ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    return f"median {statistics.median(ts):.2f} ms, p95 {ts[int(len(ts)*0.95)]:.2f} ms (n={n})"
# 10 uploads of 50 OTKs each
print("upload 50 OTKs:", timed(10, lambda i: s.post(B + "/keys/upload", headers=H(b), json={
    "device_keys": dk(b), "one_time_keys": {f"signed_curve25519:{i}_{k}": {"key": f"k{i}{k}"} for k in range(50)}}).raise_for_status()))
print("claim one OTK:", timed(200, lambda i: s.post(B + "/keys/claim", headers=H(a), json={
    "one_time_keys": {b["user_id"]: {b["device_id"]: "signed_curve25519"}}}).raise_for_status()))
print("query one user:", timed(200, lambda i: s.post(B + "/keys/query", headers=H(a), json={
    "device_keys": {b["user_id"]: []}}).raise_for_status()))
print("sendToDevice 1 msg:", timed(200, lambda i: s.put(B + f"/sendToDevice/m.test/t{i}", headers=H(a), json={
    "messages": {b["user_id"]: {b["device_id"]: {"i": i}}}}).raise_for_status()))
since = [None]
got = [0]
def sync(i):
    q = "?timeout=0" + (f"&since={since[0]}" if since[0] else "")
    r = s.get(B + "/sync" + q, headers=H(b)).json()
    got[0] += len(r["to_device"]["events"])
    since[0] = r["next_batch"]
print("sync draining to-device:", timed(5, sync), "delivered", got[0])
