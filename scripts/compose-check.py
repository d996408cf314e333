#!/usr/bin/env python3
"""`docker compose up`, for real: the stack the README describes, started from the images
scripts/compose-check.sh built, then driven and broken the way operators break things.

Steps (each timed; any failed expectation stops the check with a message and a non-zero
exit, after `down -v`):

1. `up -d` every service with an image here, and wait for health.
2. The README's walk-through, with curl's requests, against the gateway container.
3. Prometheus has scraped every Borough container.
4. `--scale query=2`: reads spread over both replicas (their own metrics).
5. `docker kill -s KILL` one query container under a read load: no request fails.
6. PostgreSQL cut off the network: a cached user is served with `Borough-Stale: true`, an
   uncached one is 503 with `Retry-After`; reconnected: writes resume, no restart.
7. The user service restarted under a keyed-write load: every acknowledged write is stored,
   once.
8. `down -v` leaves no container, network or volume.

Only the Python standard library; the Docker CLI and docker-compose (or `docker compose`).
"""

import http.client
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid

PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "boroughcheck")
COMPOSE = shlex.split(os.environ.get("COMPOSE", "docker-compose")) + [
    "-p", PROJECT, "-f", "docker-compose.yml", "-f", "deploy/standins/compose.yml",
]
# Everything but what has no stand-in here (deploy/standins/README.md).
SERVICES = ["init", "postgres", "migrate", "config", "user", "query", "gateway", "prometheus"]
WITHOUT_STAND_IN = ["otel-collector", "jaeger", "grafana"]
BOROUGH = {"gateway": 9460, "user": 9461, "query": 9462, "config": 9463}
GATEWAY = ("127.0.0.1", 8080)
PROMETHEUS = ("127.0.0.1", 9090)

started = time.monotonic()
timings = []


class CheckFailed(Exception):
    pass


def log(message):
    print(f"compose-check [{time.monotonic() - started:6.1f}s] {message}", flush=True)


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def run(args, check=True, capture=True, timeout=600):
    result = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def compose(*args, **kw):
    return run(COMPOSE + list(args), **kw)


def containers(service, all_states=False):
    args = ["docker", "ps", "-q", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}"]
    if all_states:
        args.insert(2, "-a")
    return [c for c in run(args).stdout.split() if c]


def inspect(container):
    return json.loads(run(["docker", "inspect", container]).stdout)[0]


def network():
    return f"{PROJECT}_default"


def address(container):
    return inspect(container)["NetworkSettings"]["Networks"][network()]["IPAddress"]


# ---------------------------------------------------------------------------------------
# HTTP


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"{self.status} {self.body[:300]!r}"


class Client:
    """One keep-alive HTTP/1.1 connection, reopened after an error."""

    def __init__(self, host_port=GATEWAY, timeout=15):
        self.host, self.port = host_port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read().decode("utf-8", "replace")
                reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                return reply
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # The server closed an idle keep-alive connection: once more on a new one.
                self.close()
                if attempt == 1:
                    raise e
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def get_text(host_port, path, timeout=5):
    conn = http.client.HTTPConnection(*host_port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_for(what, probe, timeout, interval=0.5):
    """Polls `probe` until it returns a true value; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as e:  # a probe may fail while things start
            last = e
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def phase(name):
    def wrap(fn):
        def timed(*args, **kw):
            log(f"== {name}")
            t0 = time.monotonic()
            result = fn(*args, **kw)
            timings.append((name, time.monotonic() - t0))
            log(f"   {name}: passed in {time.monotonic() - t0:.1f}s")
            return result
        return timed
    return wrap


# ---------------------------------------------------------------------------------------
# The steps


def healthy():
    for service in ["init", "migrate"]:
        for c in containers(service, all_states=True):
            state = inspect(c)["State"]
            if state["Status"] == "exited" and state["ExitCode"] != 0:
                logs = run(["docker", "logs", "--tail", "30", c], check=False)
                raise CheckFailed(f"{service} exited with {state['ExitCode']}:\n{logs.stdout}{logs.stderr}")
    for service in ["postgres", *BOROUGH]:
        found = containers(service)
        if not found:
            return False
        for c in found:
            if inspect(c)["State"].get("Health", {}).get("Status") != "healthy":
                return False
    return True


@phase("up and healthy")
def up():
    compose("up", "-d", "--no-build", *SERVICES, timeout=900)
    wait_for("every service healthy", healthy, timeout=180)
    for service in WITHOUT_STAND_IN:
        expect(not containers(service), f"{service} runs, but it has no stand-in here")
    log(f"   running without {', '.join(WITHOUT_STAND_IN)} (no stand-in; see deploy/standins/README.md)")


@phase("README walk-through against the gateway container")
def walk_through():
    # The README's way to the admin token.
    token = compose("exec", "-T", "gateway", "cat", "/run/borough/admin-token").stdout.strip()
    expect(len(token) >= 16, "the generated admin token is missing or short")
    http_ = Client()
    r = http_.request("GET", "/hello")
    expect(r.status == 200 and r.json() == {"message": "Hello from Borough!"}, f"/hello: {r}")
    r = http_.request("GET", "/admin/v1/tenants", headers=bearer("not-the-token-at-all"))
    expect(r.status == 401, f"a wrong admin token: {r}")

    name = f"acme-{uuid.uuid4().hex[:8]}"
    r = http_.request("POST", "/admin/v1/tenants", {"name": name}, bearer(token))
    expect(r.status in (200, 201), f"create tenant: {r}")
    created = r.json()
    expect(created["tenant"]["placement"] == "shared", f"placement: {created}")
    key = created["api_key"]["key"]
    tenant_id = created["tenant"]["id"]
    r = http_.request("GET", "/admin/v1/tenants", headers=bearer(token))
    expect(r.status == 200 and name in r.body, f"list tenants: {r}")

    auth = bearer(key)
    r = http_.request("POST", "/api/v1/users", {"name": "Ada Lovelace", "email": "ada@example.com"}, auth)
    expect(r.status == 201 and r.header("etag") == '"1"' and r.header("location"), f"create user: {r}")
    user = r.json()
    uid = user["id"]
    expect(r.header("location") == f"/api/v1/users/{uid}", f"Location: {r.header('location')}")
    r = http_.request("GET", f"/api/v1/users/{uid}", headers=auth)
    expect(r.status == 200 and r.json()["email"] == "ada@example.com", f"read user: {r}")
    r = http_.request("GET", "/api/v1/users?limit=10", headers=auth)
    expect(r.status == 200 and any(u["id"] == uid for u in r.json()["items"]), f"list users: {r}")
    r = http_.request("PATCH", f"/api/v1/users/{uid}", {"name": "Ada King"}, {**auth, "If-Match": '"1"'})
    expect(r.status == 200 and r.json()["version"] == 2 and r.header("etag") == '"2"', f"patch: {r}")
    r = http_.request("PATCH", f"/api/v1/users/{uid}", {"name": "Ada King"}, {**auth, "If-Match": '"1"'})
    expect(r.status == 412, f"the same If-Match again: {r}")
    r = http_.request("POST", "/api/v1/users", {"name": "Ada"}, auth)
    expect(r.status == 400 and r.header("content-type") == "application/problem+json"
           and "email" in r.json()["detail"] and r.json().get("trace_id"), f"bad input: {r}")

    r = http_.request("GET", "/api/v1/users?q=ada&created_after=2026-01-01T00:00:00Z&limit=50", headers=auth)
    expect(r.status == 200 and any(u["id"] == uid for u in r.json()["items"]), f"search: {r}")
    ndjson = '{"name":"Grace Hopper","email":"grace@example.com"}\n{"name":"No Email"}\n'
    r = http_.request("POST", "/api/v1/users:import", ndjson, {**auth, "Content-Type": "application/x-ndjson"})
    report = r.json() if r.status == 200 else {}
    expect(report.get("received") == 2 and report.get("created") == 1 and report.get("rejected_count") == 1,
           f"import: {r}")
    r = http_.request("GET", "/api/v1/users:export", headers=auth)
    lines = [json.loads(line) for line in r.body.splitlines() if line.strip()]
    expect(r.status == 200 and {u["email"] for u in lines} == {"ada@example.com", "grace@example.com"},
           f"export NDJSON: {r}")
    r = http_.request("GET", "/api/v1/users:export", headers={**auth, "Accept": "text/csv"})
    expect(r.status == 200 and "Ada King" in r.body and (r.header("content-type") or "").startswith("text/csv"),
           f"export CSV: {r}")
    missing = "0193a0a0-0000-7000-8000-000000000000"
    r = http_.request("POST", "/api/v1/users:batchGet", {"ids": [uid, missing]}, auth)
    results = r.json().get("results", []) if r.status == 200 else []
    expect(len(results) == 2 and results[0].get("user", {}).get("id") == uid
           and results[1].get("error", {}).get("status") == 404, f"batchGet: {r}")

    r = http_.request("PUT", "/api/v1/config/app/theme", {"mode": "dark"}, auth)
    expect(r.status in (200, 201), f"tenant config PUT: {r}")
    r = http_.request("PUT", "/admin/v1/config/platform/gateway/http.request_timeout", "\"5s\"",
                      {**bearer(token), "Content-Type": "application/json"})
    expect(r.status in (200, 201), f"platform config PUT: {r}")
    r = http_.request("PUT", "/admin/v1/config/platform/gateway/http.request_timeout", "\"10s\"",
                      {**bearer(token), "Content-Type": "application/json"})
    expect(r.status in (200, 201), f"platform config PUT back: {r}")

    r = http_.request("DELETE", f"/api/v1/users/{uid}", headers=auth)
    expect(r.status == 204, f"delete: {r}")
    r = http_.request("GET", f"/api/v1/users/{uid}", headers=auth)
    expect(r.status == 404, f"read after delete: {r}")

    # A second `up` keeps every credential (and the data): the same token still works.
    compose("up", "-d", "--no-build", *SERVICES, timeout=900)
    wait_for("every service healthy after a second up", healthy, timeout=180)
    again = compose("exec", "-T", "gateway", "cat", "/run/borough/admin-token").stdout.strip()
    expect(again == token, "a second `up` changed the admin token")
    r = http_.request("GET", "/admin/v1/tenants", headers=bearer(token))
    expect(r.status == 200 and name in r.body, f"after a second up: {r}")

    # The loads below run well over the default 100 requests/s: an operator raises it.
    limits = {"requests_per_second": 20000, "burst": 20000}
    r = http_.request("PUT", f"/admin/v1/tenants/{tenant_id}/limits", limits, bearer(token))
    expect(r.status == 200, f"raise the tenant's rate limit: {r}")
    wait_for("the gateway to apply the new limit",
             lambda: "q=20000" in (http_.request("GET", "/api/v1/users?limit=1", headers=auth)
                                   .header("ratelimit-policy") or ""),
             timeout=30)
    http_.close()
    return token, key


def scraped_every_container():
    status, body = get_text(PROMETHEUS, "/api/v1/targets?state=active")
    if status != 200:
        return False
    up = {t["scrapeUrl"].split("//")[1].split("/")[0] for t in json.loads(body)["data"]["activeTargets"]
          if t["health"] == "up"}
    wanted = {f"{address(c)}:{port}" for service, port in BOROUGH.items() for c in containers(service)}
    missing = wanted - up
    return (not missing) and wanted


@phase("Prometheus scraped every Borough container")
def prometheus():
    wanted = wait_for("Prometheus to scrape every Borough container", scraped_every_container, timeout=60)
    log(f"   {len(wanted)} containers up in Prometheus: {', '.join(sorted(wanted))}")


def query_calls(container):
    """GetUser calls a query replica answered, by its own metrics."""
    status, body = get_text((address(container), BOROUGH["query"]), "/metrics")
    expect(status == 200, f"query metrics: {status}")
    total = 0.0
    for line in body.splitlines():
        if line.startswith("borough_grpc_server_calls_total{") and "GetUser" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def make_users(key, count, prefix):
    http_ = Client()
    ids = []
    for i in range(count):
        r = http_.request("POST", "/api/v1/users", {"name": f"{prefix} {i}", "email": f"{prefix}-{i}@example.com"},
                          bearer(key))
        expect(r.status == 201, f"create user: {r}")
        ids.append(r.json()["id"])
    http_.close()
    return ids


@phase("--scale query=2: reads spread over both replicas")
def scale(key):
    compose("up", "-d", "--no-build", "--no-deps", "--scale", "query=2", "query")
    wait_for("two healthy query replicas", lambda: len(containers("query")) == 2 and healthy(), timeout=90)
    replicas = containers("query")
    ids = make_users(key, 50, "spread")
    before = {c: query_calls(c) for c in replicas}

    def read(client, worker, i):
        uid = ids[(worker * 7 + i) % len(ids)]
        r = client.request("GET", f"/api/v1/users/{uid}", headers=bearer(key))
        return None if r.status == 200 else f"GET {uid}: {r}"

    # The new replica starts with a cold cache: its first reads are slower, and the
    # gateway's balancer (peak-EWMA latency) favours the warm one until they even out. The
    # load runs in rounds of 3 s until each replica has served at least a tenth of it.
    t0 = time.monotonic()

    def spread():
        with Load(8, read) as load:
            time.sleep(3)
        expect(not load.failures, f"reads failed: {load.failures[:3]}")
        counts = {c: query_calls(c) - before[c] for c in replicas}
        total = sum(counts.values())
        log("   reads per replica so far: "
            + ", ".join(f"{c[:12]} {n:.0f} ({n / max(total, 1):.0%})" for c, n in counts.items()))
        return total > 0 and min(counts.values()) >= total * 0.1 and counts

    wait_for("reads spread over both query replicas", spread, timeout=60, interval=0)
    log(f"   spread after {time.monotonic() - t0:.1f}s of load")
    wait_for("Prometheus to scrape both query replicas", scraped_every_container, timeout=60)
    return ids


class Load:
    """`workers` threads calling `one(client, worker, i)` until stopped; counts outcomes."""

    def __init__(self, workers, one):
        self.one = one
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.latencies = []
        self.threads = [threading.Thread(target=self.work, args=(w,), daemon=True) for w in range(workers)]

    def work(self, worker):
        client = Client(timeout=30)
        i = 0
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            try:
                failure = self.one(client, worker, i)
            except Exception as e:
                failure = f"{type(e).__name__}: {e}"
            elapsed = time.monotonic() - t0
            with self.lock:
                self.latencies.append(elapsed)
                if failure:
                    self.failures.append(failure)
                else:
                    self.ok += 1
            i += 1
        client.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=60)

    def summary(self):
        lat = sorted(self.latencies) or [0]
        return (f"{self.ok} ok, {len(self.failures)} failed; latency p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
                f"p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")


@phase("docker kill -s KILL a query replica under a read load")
def kill_query(key, ids):
    victim = containers("query")[0]

    def read(client, worker, i):
        uid = ids[(worker * 7 + i) % len(ids)]
        r = client.request("GET", f"/api/v1/users/{uid}", headers=bearer(key))
        return None if r.status == 200 else f"GET {uid}: {r}"

    with Load(8, read) as load:
        time.sleep(3)
        run(["docker", "kill", "-s", "KILL", victim])
        log(f"   killed {victim[:12]}")
        time.sleep(10)
    log(f"   reads: {load.summary()}")
    expect(not load.failures, f"{len(load.failures)} idempotent reads failed, e.g. {load.failures[:3]}")
    expect(load.ok > 100, f"too few reads to tell ({load.ok})")
    # Back to two replicas for what follows.
    compose("up", "-d", "--no-build", "--no-deps", "--scale", "query=2", "query")
    wait_for("two healthy query replicas again", lambda: len(containers("query")) == 2 and healthy(), timeout=90)


@phase("PostgreSQL cut off the network, then reconnected")
def partition(key, ids):
    cached, uncached = ids[0], make_users(key, 1, "uncached")[0]
    http_ = Client(timeout=30)
    for _ in range(10):  # cached on both replicas
        r = http_.request("GET", f"/api/v1/users/{cached}", headers=bearer(key))
        expect(r.status == 200, f"read: {r}")
    postgres = containers("postgres")[0]
    run(["docker", "network", "disconnect", network(), postgres])
    cut = time.monotonic()
    log(f"   disconnected {postgres[:12]} from {network()}")
    try:
        def stale():
            r = http_.request("GET", f"/api/v1/users/{cached}", headers=bearer(key))
            expect(r.status == 200, f"a cached user while PostgreSQL is cut off: {r}")
            return r.header("borough-stale") == "true" and r
        r = wait_for("a cached user served with Borough-Stale: true", stale, timeout=60, interval=0.5)
        log(f"   cached user: 200, Borough-Stale: true, Age: {r.header('age')} "
            f"({time.monotonic() - cut:.1f}s after the cut)")
        t0 = time.monotonic()
        r = http_.request("GET", f"/api/v1/users/{uncached}", headers=bearer(key))
        expect(r.status == 503 and r.header("retry-after"), f"an uncached user while cut off: {r}")
        log(f"   uncached user: 503, Retry-After: {r.header('retry-after')} in {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        r = http_.request("POST", "/api/v1/users", {"name": "During", "email": "during@example.com"}, bearer(key))
        expect(r.status == 503, f"a write while cut off: {r}")
        log(f"   write: 503 in {time.monotonic() - t0:.1f}s")
    finally:
        run(["docker", "network", "connect", "--alias", "postgres", network(), postgres])
    back = time.monotonic()
    log("   reconnected")
    idem = str(uuid.uuid4())

    def write():
        r = http_.request("POST", "/api/v1/users", {"name": "After", "email": "after@example.com"},
                          {**bearer(key), "Idempotency-Key": idem})
        return r.status == 201 and r
    r = wait_for("writes to resume", write, timeout=90, interval=1)
    log(f"   writes resumed {time.monotonic() - back:.1f}s after reconnecting (no restart)")
    written = r.json()["id"]

    # Reads: each query replica fails fast for a moment after failures (503, Retry-After)
    # and tries the database again within 250 ms; a client honouring Retry-After gets
    # through. Every id, on every try, is 200 or that 503, nothing else.
    def reads():
        for uid in (written, uncached, cached):
            r = http_.request("GET", f"/api/v1/users/{uid}", headers=bearer(key))
            expect(r.status in (200, 503), f"a read after reconnecting: {r}")
            if r.status != 200 or r.header("borough-stale") is not None:
                return False
        return True
    wait_for("reads to resume, fresh", reads, timeout=30, interval=0.25)
    log(f"   fresh reads of every user {time.monotonic() - back:.1f}s after reconnecting")
    http_.close()


@phase("restart the user service under a keyed-write load")
def restart_user(key):
    acked = {}
    lock = threading.Lock()
    run_id = uuid.uuid4().hex[:8]
    gave_up = []

    def write(client, worker, i):
        email = f"w-{run_id}-{worker}-{i}@example.com"
        idem = f"{run_id}-{worker}-{i}"
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            try:
                r = client.request("POST", "/api/v1/users", {"name": f"W {worker} {i}", "email": email},
                                   {**bearer(key), "Idempotency-Key": idem})
                if r.status == 201:
                    with lock:
                        acked[email] = r.json()["id"]
                    return None
                last = r
                expect(r.status in (429, 502, 503, 504), f"a keyed write: {r}")
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.2)
        gave_up.append(email)
        return f"gave up on {email}: {last}"

    with Load(4, write) as load:
        time.sleep(3)
        t0 = time.monotonic()
        compose("restart", "user")
        log(f"   restarted user in {time.monotonic() - t0:.1f}s")
        time.sleep(5)
    log(f"   writes: {load.summary()}")
    expect(not load.failures, f"writes failed: {load.failures[:3]}")
    # Every acknowledged write is stored, once.
    r = Client(timeout=60).request("GET", "/api/v1/users:export", headers=bearer(key))
    expect(r.status == 200, f"export: {r}")
    stored = {}
    for line in r.body.splitlines():
        if line.strip():
            user = json.loads(line)
            stored.setdefault(user["email"], []).append(user["id"])
    lost = [e for e in acked if e not in stored]
    doubled = [e for e in acked if len(stored.get(e, [])) > 1]
    wrong = [e for e in acked if e in stored and stored[e] != [acked[e]]]
    expect(not lost, f"{len(lost)} acknowledged writes are missing, e.g. {lost[:3]}")
    expect(not doubled and not wrong, f"writes stored twice or under another id: {doubled[:3]} {wrong[:3]}")
    log(f"   {len(acked)} acknowledged writes, all stored once")


@phase("down -v leaves nothing behind")
def down():
    compose("down", "-v", "--remove-orphans", timeout=300)
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {
        "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
        "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
        "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
    }
    expect(not any(left.values()), f"left behind: {left}")


def main():
    ok = False
    try:
        up()
        _, key = walk_through()
        prometheus()
        ids = scale(key)
        kill_query(key, ids)
        partition(key, ids)
        restart_user(key)
        down()
        ok = True
    except CheckFailed as e:
        log(f"FAILED: {e}")
        logs = compose("logs", "--no-color", "--tail", "40", check=False)
        print(logs.stdout[-20000:], file=sys.stderr)
    finally:
        if not ok:
            compose("down", "-v", "--remove-orphans", check=False, timeout=300)
    for name, seconds in timings:
        log(f"   {seconds:6.1f}s  {name}")
    log("passed" if ok else "failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
