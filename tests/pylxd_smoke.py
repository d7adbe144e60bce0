"""pylxd 2.4.2 against bivy (LXD_DIR=<bivy dir>): instances, exec, files, config, state,
profiles, operations. Run by tests/pylxd.rs; exits non-zero with a message on the first failure."""
import logging
import os
import sys
import time

import pylxd


class Errors(logging.Handler):
    """ws4py's errors: a websocket that failed instead of closing cleanly."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.seen = []

    def emit(self, record):
        self.seen.append(record.getMessage())


ws_errors = Errors()
logging.getLogger("ws4py").addHandler(ws_errors)


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


client = pylxd.Client()
check(client.server_clustered is False, "server info")
check(client.has_api_extension("instances"), "api_extensions")

name = "py1"
config = {"name": name, "source": {"type": "image", "alias": "busybox"}, "config": {"limits.memory": "256MiB"}}
inst = client.instances.create(config, wait=True)
check(inst.name == name, "create")
inst.start(wait=True)
inst.sync()
check(inst.status == "Running", f"start: {inst.status}")

res = inst.execute(["sh", "-c", "echo out; echo err >&2; exit 3"])
check(res.exit_code == 3, f"exit code {res.exit_code}")
check(res.stdout == "out\n", f"stdout {res.stdout!r}")
check(res.stderr == "err\n", f"stderr {res.stderr!r}")
# The output sockets were open until pylxd closed them, and its close was answered: ws4py
# reported no socket that failed (pylxd's execute waits in its socket manager's poll, 100 ms,
# when the server has closed them first).
for _ in range(3):
    check(inst.execute(["true"]).exit_code == 0, "execute true")
check(not ws_errors.seen, f"ws4py errors: {ws_errors.seen}")

inst.files.put("/root/from-pylxd", b"pylxd data\n")
check(inst.files.get("/root/from-pylxd") == b"pylxd data\n", "files get")

inst.config["user.pylxd"] = "yes"
inst.save(wait=True)
inst2 = client.instances.get(name)
check(inst2.config.get("user.pylxd") == "yes", "config save")

state = inst.state()
check(state.status == "Running" and state.pid > 0, f"state {state.status} {state.pid}")

# The config pylxd read at create (volatile.apply_template, no last_state.power) saved back
# after the start changed those: the user's key is taken, the daemon's volatile keys stay.
late = client.instances.create({"name": "py2", "source": {"type": "image", "alias": "busybox"}}, wait=True)
late.start(wait=True)
late.config["user.late"] = "v"
late.save(wait=True)
late2 = client.instances.get("py2")
check(late2.config.get("user.late") == "v", "save with a stale config")
check(late2.config.get("volatile.last_state.power") == "RUNNING", f"power {late2.config}")
check("volatile.apply_template" not in late2.config, f"apply_template back: {late2.config}")
late2.stop(wait=True)
late2.delete(wait=True)

prof = client.profiles.create("pyprof", config={"user.x": "1"})
check(client.profiles.exists("pyprof"), "profile create")
prof.delete()
check(not client.profiles.exists("pyprof"), "profile delete")

# operations/<id>/wait through the raw API.
resp = client.api.instances[name].state.put(json={"action": "stop", "timeout": 30, "force": True})
op_url = resp.json()["operation"]
op_id = op_url.rsplit("/", 1)[-1]
waited = client.api.operations[op_id].wait.get(params={"timeout": 30}).json()["metadata"]
check(waited["status"] == "Success", f"operation wait {waited}")
inst.sync()
check(inst.status == "Stopped", f"stop: {inst.status}")

# Snapshots: create (server-named), restore, rename, delete; storage pools.
inst.files.put("/root/snapfile", b"before\n")
inst.snapshots.create("snap0", wait=True)
inst.files.put("/root/snapfile", b"after\n")
inst.restore_snapshot("snap0", wait=True)
check(inst.files.get("/root/snapfile") == b"before\n", "restore")
snap = inst.snapshots.get("snap0")
snap.rename("first", wait=True)
check([s.name for s in inst.snapshots.all()] == ["first"], "snapshot rename")
inst.snapshots.get("first").delete(wait=True)
check(inst.snapshots.all() == [], "snapshot delete")
pools = client.storage_pools.all()
check([p.name for p in pools] == ["default"] and pools[0].driver == "dir", f"pools {pools}")
check(pools[0].resources.get().space["total"] > 0, "pool resources")

# Custom volume snapshots: create (named and server-named), list, restore, rename, delete.
vol = pools[0].volumes.create({"name": "pyvol", "type": "custom"})
vol.snapshots.create("vs0")
vol.snapshots.create()
check(vol.snapshots.all() == ["vs0", "snap0"], f"volume snapshots {vol.snapshots.all()}")
check(vol.snapshots.get("vs0").expires_at is None, "volume snapshot expiry")
vol.restore_from("vs0", wait=True)
vol.snapshots.get("snap0").rename("other")
check([s.name for s in vol.snapshots.all(use_recursion=True)] == ["vs0", "other"], "volume snapshot rename")
vol.snapshots.get("other").delete(wait=True)
check(vol.snapshots.all() == ["vs0"], "volume snapshot delete")
vol.delete()
check(not any(v.name == "pyvol" for v in pools[0].volumes.all()), "volume delete")

inst.delete(wait=True)
check(not client.instances.exists(name), "delete")
print("pylxd ok")
