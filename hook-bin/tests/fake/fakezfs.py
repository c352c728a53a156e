#!/usr/bin/env python3
"""A stateful fake of `zfs`, `mount -t zfs` and `umount` for zfs-snap's
hermetic tests, modelled on OpenZFS 2.3 output and error messages.

Called as `fakezfs.py zfs ARGS`, `fakezfs.py mount ARGS` or
`fakezfs.py umount ARGS`. State lives in the JSON file named by
$FAKE_ZFS_STATE:

  datasets:   name -> {dir, mountpoint, canmount, mounted, keystatus, props}
              `dir` is the directory holding the dataset's files; a mounted
              dataset appears in the fake mount table at `dir`.
  snapshots:  name -> {props, holds: [tag], store, deferred}
  mountinfo:  path of the fake /proc/self/mountinfo (zfs-snap reads it via
              ZFS_SNAP_MOUNTINFO)
  log:        every call is appended here, one line, argv joined by spaces
  fail:       {"<verb>": "message"} makes that zfs verb fail with the message
              ("SIGKILL": the fake kills itself, printing nothing);
              {"mount_at": N} makes the Nth mount fail; {"umount": "message"}
              makes every unmount fail
  after_snapshot: [[path, content]] files written right after a snapshot
  garbage:    a line `zfs list` prints first (malformed output)

Snapshots copy the dataset's directory (child datasets' mountpoints stay as
empty directories, as in real ZFS); mounting copies a snapshot into the
target and adds a line to the mount table; unmounting empties the target.
"""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys

STATE = os.environ["FAKE_ZFS_STATE"]


def load():
    with open(STATE) as f:
        return json.load(f)


def save(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, STATE)


def die(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def log(state, argv):
    with open(state["log"], "a") as f:
        f.write(" ".join(argv) + "\n")


def check_fail(state, verb):
    message = state.get("fail", {}).get(verb)
    if message == "SIGKILL":
        # Killed before printing anything, as ^C or `systemctl stop` does.
        os.kill(os.getpid(), signal.SIGKILL)
    if message:
        die(message)


def parent(name):
    return name.rsplit("/", 1)[0] if "/" in name else None


def user_prop(state, name, prop):
    """(value, source) of a user property, inherited like ZFS does; a
    snapshot's `received` properties (zfs receive) show source `received`."""
    if "@" in name:
        snap = state["snapshots"][name]
        if prop in snap["props"]:
            return snap["props"][prop], "local"
        if prop in snap.get("received", {}):
            return snap["received"][prop], "received"
        value, source = user_prop(state, name.split("@")[0], prop)
        if source == "local":
            source = "inherited from " + name.split("@")[0]
        return value, source
    ds = state["datasets"][name]
    if prop in ds["props"]:
        return ds["props"][prop], "local"
    p = parent(name)
    while p:
        if p in state["datasets"] and prop in state["datasets"][p]["props"]:
            return state["datasets"][p]["props"][prop], "inherited from " + p
        p = parent(p)
    return "-", "-"


def column(state, name, col):
    if col == "name":
        return name
    if "@" in name:
        if ":" in col:
            return user_prop(state, name, col)[0]
        return "-"
    ds = state["datasets"][name]
    if col == "name":
        return name
    if col == "mountpoint":
        return ds["mountpoint"]
    if col == "canmount":
        return ds.get("canmount", "on")
    if col == "mounted":
        return "yes" if ds.get("mounted") else "no"
    if col == "keystatus":
        return ds.get("keystatus", "-")
    if col == "guid":
        # Stable per name unless a test sets one (a pool re-created).
        return str(ds.get("guid", sum(ord(c) * 31**i for i, c in enumerate(name)) % 2**63))
    if ":" in col:
        return user_prop(state, name, col)[0]
    die("bad property list: invalid property '%s'" % col, 2)


def zfs_list(state, args):
    types, cols, i, json_out, explicit = ["filesystem"], ["name"], 0, False, []
    while i < len(args):
        a = args[i]
        if a in ("-H", "-p"):
            i += 1
        elif a == "-j":
            json_out = True
            i += 1
        elif a == "-t":
            types = args[i + 1].split(",")
            i += 2
        elif a == "-o":
            cols = args[i + 1].split(",")
            i += 2
        elif a.startswith("-"):
            die("invalid option '%s'" % a.lstrip("-")[:1], 2)
        else:
            explicit.append(a)
            i += 1
    if state.get("garbage"):
        print(state["garbage"])
    names = []
    if "filesystem" in types:
        names += list(state["datasets"])
    if "snapshot" in types:
        names += list(state["snapshots"])
    if explicit:
        for n in explicit:
            if n not in names:
                # Real zfs goes on with the others but prints no JSON.
                die("cannot open '%s': dataset does not exist" % n)
        names = explicit
    if json_out:
        return zfs_list_json(state, sorted(names), cols)
    for name in sorted(names):
        print("\t".join(column(state, name, c) for c in cols))


def json_string(value):
    """A string as OpenZFS 2.3's nvlist_print_json writes it: control
    characters and the Basic Multilingual Plane escaped, characters above
    it dropped; None where zfs gives up (a byte not valid in the locale:
    here, a lone surrogate, which is what JSON state holds for one)."""
    out = ['"']
    for c in value:
        o = ord(c)
        if 0xD800 <= o <= 0xDFFF:
            return None
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\n\r\f\t\b":
            out.append({"\n": "\\n", "\r": "\\r", "\f": "\\f", "\t": "\\t", "\b": "\\b"}[c])
        elif o <= 0x1F or 0x7F < o <= 0xFFFF:
            out.append("\\u%04x" % o)
        elif o <= 0x7F:
            out.append(c)
    out.append('"')
    return "".join(out)


def zfs_list_json(state, names, cols):
    """`zfs list -j` as OpenZFS 2.3.2 prints it: one line of JSON. Where a
    value cannot be printed, output stops there (and zfs exits 0)."""
    out = ['{"output_version":{"command":"zfs list","vers_major":0,"vers_minor":1},"datasets":{']
    for n, name in enumerate(names):
        kind = "SNAPSHOT" if "@" in name else "FILESYSTEM"
        head = '%s%s:{"name":%s,"type":"%s","pool":%s,"createtxg":"1","properties":{' % (
            "," if n else "", json_string(name), json_string(name), kind,
            json_string(name.split("/")[0].split("@")[0]))
        out.append(head)
        first = True
        for c in cols:
            if c == "name":
                continue
            value = column(state, name, c)
            source = "NONE"
            if ":" in c and "@" not in name:
                src = user_prop(state, name, c)[1]
                source = "LOCAL" if src == "local" else "INHERITED" if src != "-" else "NONE"
            encoded = json_string(value)
            out.append(("" if first else ",") + json_string(c) + ':{"value":')
            if encoded is None:
                sys.stdout.write("".join(out) + "\n")
                return
            out.append('%s,"source":{"type":"%s","data":"-"}}' % (encoded, source))
            first = False
        out.append("}}")
    out.append("}}")
    print("".join(out))


def dataset_dir_copy(state, dataset, store):
    src = state["datasets"][dataset]["dir"]
    os.makedirs(store)
    subprocess.run(["cp", "-a", src + "/.", store], check=True)
    # Child datasets are other file systems: the parent's snapshot holds
    # only their (empty) mountpoint directories.
    for name, ds in state["datasets"].items():
        if name.startswith(dataset + "/") and ds.get("mounted"):
            rel = os.path.relpath(ds["dir"], src)
            if not rel.startswith(".."):
                inside = os.path.join(store, rel)
                if os.path.isdir(inside):
                    shutil.rmtree(inside)
                    os.makedirs(inside)


def zfs_snapshot(state, args):
    props, names, i = {}, [], 0
    while i < len(args):
        if args[i] == "-o":
            key, _, value = args[i + 1].partition("=")
            props[key] = value
            i += 2
        else:
            names.append(args[i])
            i += 1
    pools = {n.split("/")[0].split("@")[0] for n in names}
    if len(pools) > 1:
        die("cannot create snapshots : cross-device links")  # one pool per call
    for n in names:
        ds = n.split("@")[0]
        if ds not in state["datasets"]:
            die("cannot open '%s': dataset does not exist" % ds)
        if n in state["snapshots"]:
            die("cannot create snapshot '%s': dataset already exists" % n)
    store_root = os.path.join(os.path.dirname(STATE), "snapshots")
    for n in names:
        store = os.path.join(store_root, n.replace("/", "_"))
        dataset_dir_copy(state, n.split("@")[0], store)
        state["snapshots"][n] = {"props": dict(props), "holds": [], "store": store}
    for path, content in state.pop("after_snapshot", []):
        with open(path, "w") as f:
            f.write(content)


def need_snapshot(state, name, verb):
    if name not in state["snapshots"]:
        die("cannot %s '%s': dataset does not exist" % (verb, name))
    return state["snapshots"][name]


def recursive_names(state, args, verb):
    """`-r TAG ds@name`: every snapshot called `name` at or below `ds`."""
    tag, target = args[1], args[2]
    ds, snapname = target.split("@")
    names = [n for n in state["snapshots"]
             if n.split("@")[1] == snapname
             and (n.split("@")[0] == ds or n.split("@")[0].startswith(ds + "/"))]
    if not names:
        die("cannot %s '%s': dataset does not exist" % (verb, target))
    return tag, names


def zfs_hold(state, args):
    if args[0] == "-r":
        tag, names = recursive_names(state, args, "hold snapshot")
    else:
        tag, names = args[0], args[1:]
    for n in names:
        if tag in need_snapshot(state, n, "hold snapshot")["holds"]:
            die("cannot hold snapshot '%s': tag already exists on this dataset" % n)
    for n in names:
        state["snapshots"][n]["holds"].append(tag)


def zfs_release(state, args):
    if args[0] == "-r":
        tag, names = recursive_names(state, args, "release hold from snapshot")
    else:
        tag, names = args[0], args[1:]
    for n in names:
        if tag not in need_snapshot(state, n, "release hold from snapshot")["holds"]:
            die("cannot release hold from snapshot '%s': no such tag on this dataset" % n)
    for n in names:
        snap = state["snapshots"][n]
        snap["holds"].remove(tag)
        if snap.get("deferred") and not snap["holds"]:
            remove_snapshot(state, n)


def zfs_holds(state, args):
    names = [a for a in args if a != "-H"]
    stamp = datetime.datetime(2026, 11, 26, 3, 35).strftime("%a %b %d %H:%M %Y")
    for n in names:
        for tag in need_snapshot(state, n, "open")["holds"]:
            print("%s\t%s\t%s" % (n, tag, stamp))


def mounted_snapshots(state):
    return {m["source"] for m in state.get("mounts", [])}


def remove_snapshot(state, name):
    shutil.rmtree(state["snapshots"][name]["store"], ignore_errors=True)
    del state["snapshots"][name]


def zfs_destroy(state, args):
    recursive = "-r" in args
    defer = "-d" in args
    target = [a for a in args if not a.startswith("-")][0]
    if "@" not in target:
        die("fake zfs destroys snapshots only")
    ds, snapname = target.split("@")
    if recursive:
        names = [n for n in state["snapshots"]
                 if n.split("@")[1] == snapname
                 and (n.split("@")[0] == ds or n.split("@")[0].startswith(ds + "/"))]
        if not names:
            die("could not find any snapshots to destroy; check snapshot names.")
    else:
        need_snapshot(state, target, "open")
        names = [target]
    busy = [n for n in names if state["snapshots"][n]["holds"] or n in mounted_snapshots(state)]
    if busy and defer:
        for n in busy:
            state["snapshots"][n]["deferred"] = True
        names = [n for n in names if n not in busy]
    elif busy:
        die("cannot destroy snapshot %s: dataset is busy" % busy[0])
    for n in names:
        remove_snapshot(state, n)


def zfs_set(state, args):
    key, _, value = args[0].partition("=")
    for ds in args[1:]:
        if ds not in state["datasets"]:
            die("cannot open '%s': dataset does not exist" % ds)
    for ds in args[1:]:
        state["datasets"][ds]["props"][key] = value


def zfs_inherit(state, args):
    key = args[0]
    for ds in args[1:]:
        if ds not in state["datasets"]:
            die("cannot open '%s': dataset does not exist" % ds)
    for ds in args[1:]:
        state["datasets"][ds]["props"].pop(key, None)


def zfs_get(state, args):
    """`get -H -p [-t TYPES] [-s SOURCES] -o COLS PROP [NAME...]` (no names:
    every dataset of the types, filesystems by default)."""
    cols, names, i = ["name", "property", "value", "source"], [], 0
    types, sources = ["filesystem"], None
    while i < len(args):
        a = args[i]
        if a in ("-H", "-p"):
            i += 1
        elif a in ("-t", "-o", "-s"):
            if a == "-o":
                cols = args[i + 1].split(",")
            elif a == "-t":
                types = args[i + 1].split(",")
            else:
                sources = args[i + 1].split(",")
            i += 2
        elif a.startswith("-"):
            die("invalid option '%s'" % a, 2)
        else:
            names.append(a)
            i += 1
    prop, names = names[0], names[1:]
    # A test may destroy snapshots between a listing and this call.
    for gone in state.pop("vanish_on_get", []):
        remove_snapshot(state, gone)
    missing = False
    everything = []
    if "filesystem" in types:
        everything += sorted(state["datasets"])
    if "snapshot" in types:
        everything += sorted(state["snapshots"])
    for name in names or everything:
        if name not in state["datasets"] and name not in state["snapshots"]:
            # Like zfs: report, go on with the others, exit 1 at the end.
            sys.stderr.write("cannot open '%s': dataset does not exist\n" % name)
            missing = True
            continue
        value, source = user_prop(state, name, prop)
        kind = source.split(" ")[0] if source != "-" else "none"
        if sources is not None and kind not in sources:
            continue
        row = {"name": name, "property": prop, "value": value, "source": source}
        print("\t".join(row[c] for c in cols))
    if missing:
        save(state)
        sys.exit(1)


def write_mountinfo(state):
    lines = list(state.get("base_mountinfo", []))
    for i, m in enumerate(state.get("mounts", [])):
        dev = os.stat(m["target"]).st_dev
        lines.append("%d 1 %d:%d / %s ro,nosuid,nodev,noexec - zfs %s ro"
                     % (900 + i, os.major(dev), os.minor(dev), escape(m["target"]), escape(m["source"])))
    with open(state["mountinfo"], "w") as f:
        f.write("\n".join(lines) + "\n")


def escape(text):
    return (text.replace("\\", "\\134").replace(" ", "\\040")
            .replace("\t", "\\011").replace("\n", "\\012"))


def mount(state, args):
    positional = []
    i = 0
    while i < len(args):
        if args[i] in ("-t", "-o"):
            i += 2
        else:
            positional.append(args[i])
            i += 1
    source, target = positional
    state["mount_count"] = state.get("mount_count", 0) + 1
    if state.get("fail", {}).get("mount_at") == state["mount_count"]:
        save(state)
        die("mount: %s: wrong fs type, bad option, bad superblock on %s." % (target, source), 32)
    if source not in state["snapshots"]:
        die("mount: %s: special device %s does not exist." % (target, source), 32)
    if not os.path.isdir(target):
        die("mount: %s: mount point does not exist." % target, 32)
    subprocess.run(["cp", "-a", state["snapshots"][source]["store"] + "/.", target], check=True)
    state.setdefault("mounts", []).append({"source": source, "target": target})
    write_mountinfo(state)


def umount(state, args):
    target = [a for a in args if not a.startswith("-")][0]
    if state.get("fail", {}).get("umount"):
        die("umount: %s: %s" % (target, state["fail"]["umount"]), 32)
    mounts = state.get("mounts", [])
    found = [m for m in mounts if m["target"] == target]
    if not found:
        die("umount: %s: not mounted." % target, 32)
    mounts.remove(found[-1])
    for entry in os.listdir(target):
        path = os.path.join(target, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    write_mountinfo(state)


ZFS = {
    "list": zfs_list, "snapshot": zfs_snapshot, "hold": zfs_hold,
    "release": zfs_release, "holds": zfs_holds, "destroy": zfs_destroy,
    "set": zfs_set, "inherit": zfs_inherit, "get": zfs_get,
}


def main():
    role, args = sys.argv[1], sys.argv[2:]
    state = load()
    log(state, [role] + args)
    if role == "zfs":
        if not args or args[0] not in ZFS:
            die("unrecognized command '%s'" % (args[0] if args else ""), 2)
        check_fail(state, args[0])
        ZFS[args[0]](state, args[1:])
        # The call did its work, then failed (zfs killed by a signal, say).
        message = state.get("fail_after", {}).get(args[0])
        if message:
            save(state)
            die(message)
    elif role == "mount":
        mount(state, args)
    elif role == "umount":
        umount(state, args)
    else:
        die("fakezfs: unknown role " + role, 2)
    save(state)


if __name__ == "__main__":
    main()
