//! REST conformance with LXD 5.0.2 where outside suites (pylxd's integration tests, LXD's own
//! REST spec fuzzed) found bivy differing: the advertised `api_extensions` against what the routes
//! serve, `?project=` and `?target=`, instance creation without a source type, errors from every
//! layer in LXD's JSON envelope, `/1.0/warnings`, unbuilt routes as 501, and a running
//! container's network state. Real daemon, as root.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Daemon, Lxc};
use serde_json::Value;

fn call(d: &Daemon, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    d.api(method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn extensions(d: &Daemon) -> Vec<String> {
    let (status, v) = call(d, "GET", "/1.0", None);
    assert_eq!(status, 200, "{v}");
    v["metadata"]["api_extensions"]
        .as_array()
        .expect("api_extensions")
        .iter()
        .map(|e| e.as_str().expect("string").to_string())
        .collect()
}

/// A request that a route serves: anything but "no such route" (404 "not found"), 405 or 501.
/// Requests name objects that do not exist, so a served route answers 400/404 with its own
/// message, never changing anything.
fn served(d: &Daemon, method: &str, path: &str, body: Option<&str>) -> Result<(), String> {
    let (status, v) = call(d, method, path, body);
    let err = v["error"].as_str().unwrap_or("");
    if status == 405 || status == 501 || (status == 404 && err == "not found") {
        Err(format!("{method} {path} -> {status} {err:?}"))
    } else {
        Ok(())
    }
}

type Probe = (&'static str, &'static str, Option<&'static str>);

/// What each extension bivy may claim needs from the routes (LXD's `doc/api-extensions.md`).
/// Extensions about behaviour inside a route (headers, config keys, fields) name the route they
/// live on; their behaviour is tested where it is built (files, exec, snapshots, idmap...).
/// A claimed name missing here fails the test: add its probes with the claim.
const CLAIMS: &[(&str, &[Probe])] = &[
    ("etag", &[("GET", "/1.0/profiles/default", None)]),
    ("patch", &[("PATCH", "/1.0/profiles/nosuch", Some("{}"))]),
    ("directory_manipulation", &[("POST", "/1.0/instances/nosuch/files?path=/d", Some(""))]),
    ("file_delete", &[("DELETE", "/1.0/instances/nosuch/files?path=/f", None)]),
    ("file_append", &[("POST", "/1.0/instances/nosuch/files?path=/f", Some(""))]),
    ("file_symlinks", &[("POST", "/1.0/instances/nosuch/files?path=/f", Some(""))]),
    ("entity_description", &[("GET", "/1.0/profiles/default", None)]),
    (
        "storage",
        // Pools, the volumes on them, and custom volumes (tests/devices.rs exercises them).
        &[
            ("GET", "/1.0/storage-pools", None),
            ("POST", "/1.0/storage-pools", Some("{}")),
            ("GET", "/1.0/storage-pools/nosuch", None),
            ("PUT", "/1.0/storage-pools/nosuch", Some("{}")),
            ("PATCH", "/1.0/storage-pools/nosuch", Some("{}")),
            ("DELETE", "/1.0/storage-pools/nosuch", None),
            ("GET", "/1.0/storage-pools/default/volumes", None),
            ("GET", "/1.0/storage-pools/default/volumes/custom", None),
            ("GET", "/1.0/storage-pools/default/volumes/container/nosuch", None),
            ("POST", "/1.0/storage-pools/nosuch/volumes/custom", Some("{\"name\":\"v\"}")),
            ("GET", "/1.0/storage-pools/default/volumes/custom/nosuch", None),
            ("PUT", "/1.0/storage-pools/default/volumes/custom/nosuch", Some("{}")),
            ("PATCH", "/1.0/storage-pools/default/volumes/custom/nosuch", Some("{}")),
            ("DELETE", "/1.0/storage-pools/default/volumes/custom/nosuch", None),
        ],
    ),
    (
        "storage_api_volume_rename",
        &[(
            "POST",
            "/1.0/storage-pools/default/volumes/custom/nosuch",
            Some("{\"name\":\"other\"}"),
        )],
    ),
    ("profile_usedby", &[("GET", "/1.0/profiles/default", None)]),
    ("container_exec_signal_handling", &[("POST", "/1.0/instances/nosuch/exec", Some("{}"))]),
    ("container_exec_user_group_cwd", &[("POST", "/1.0/instances/nosuch/exec", Some("{}"))]),
    ("id_map", &[("PATCH", "/1.0/instances/nosuch", Some("{}"))]),
    ("id_map_base", &[("PATCH", "/1.0/instances/nosuch", Some("{}"))]),
    ("image_force_refresh", &[("POST", "/1.0/images/nosuch/refresh", None)]),
    (
        "instances",
        &[
            ("GET", "/1.0/instances", None),
            ("GET", "/1.0/instances/nosuch", None),
            ("GET", "/1.0/instances/nosuch/state", None),
        ],
    ),
    ("api_filtering", &[("GET", "/1.0/instances?filter=name+eq+x", None), ("GET", "/1.0/images?filter=public+eq+true", None)]),
    ("container_full", &[("GET", "/1.0/instances?recursion=2", None)]),
    ("instance_create_start", &[("POST", "/1.0/instances", Some("{\"start\":true}"))]),
    (
        "instance_pool_move",
        &[("POST", "/1.0/instances/nosuch", Some("{\"migration\":true,\"pool\":\"default\"}"))],
    ),
    (
        "instances_state_selective_recursion",
        &[
            ("GET", "/1.0/instances?recursion=2%3Bfields%3Dstate.network", None),
            ("GET", "/1.0/instances?recursion=2&fields=state.disk", None),
        ],
    ),
    ("instance_get_full", &[("GET", "/1.0/instances/nosuch?recursion=1", None)]),
    ("file_get_symlink", &[("GET", "/1.0/instances/nosuch/files?path=/l", None)]),
    ("image_compression_algorithm", &[("POST", "/1.0/images", Some("{\"source\":{\"type\":\"instance\",\"name\":\"nosuch\"},\"compression_algorithm\":\"gzip\"}"))]),
    ("image_create_aliases", &[("POST", "/1.0/images", Some("{\"source\":{\"type\":\"instance\",\"name\":\"nosuch\"},\"aliases\":[{\"name\":\"a\"}]}"))]),
    (
        "console",
        &[
            ("GET", "/1.0/instances/nosuch/console", None),
            ("POST", "/1.0/instances/nosuch/console", Some("{}")),
            ("DELETE", "/1.0/instances/nosuch/console", None),
        ],
    ),
    (
        "container_edit_metadata",
        &[
            ("GET", "/1.0/instances/nosuch/metadata", None),
            ("PUT", "/1.0/instances/nosuch/metadata", Some("{}")),
            ("GET", "/1.0/instances/nosuch/metadata/templates", None),
        ],
    ),
    ("container_push", &[("POST", "/1.0/instances", Some("{\"name\":\"pushed\",\"source\":{\"type\":\"migration\",\"mode\":\"push\"}}"))]),
    ("container_push_target", &[("POST", "/1.0/instances/nosuch", Some("{\"migration\":true,\"target\":{\"certificate\":\"x\",\"operation\":\"https://h/1.0/operations/x\",\"secrets\":{\"control\":\"a\",\"fs\":\"b\"}}}"))]),
    ("container_incremental_copy", &[("POST", "/1.0/instances", Some("{\"name\":\"refreshed\",\"source\":{\"type\":\"migration\",\"mode\":\"pull\",\"refresh\":true,\"operation\":\"https://127.0.0.1:1/1.0/operations/x\",\"certificate\":\"x\",\"secrets\":{\"control\":\"a\",\"fs\":\"b\"}}}"))]),
    ("container_only_migration", &[("POST", "/1.0/instances", Some("{\"name\":\"x1\",\"source\":{\"type\":\"copy\",\"source\":\"nosuch\",\"container_only\":true}}"))]),
    ("snapshot_scheduling", &[("PATCH", "/1.0/instances/nosuch", Some("{}"))]),
    ("snapshot_schedule_aliases", &[("PATCH", "/1.0/instances/nosuch", Some("{}"))]),
    ("snapshot_expiry", &[("PUT", "/1.0/instances/nosuch/snapshots/s", Some("{}"))]),
    ("snapshot_expiry_creation", &[("POST", "/1.0/instances/nosuch/snapshots", Some("{}"))]),
    ("server_supported_storage_drivers", &[("GET", "/1.0", None)]),
    ("resources", &[("GET", "/1.0/resources", None)]),
    ("resources_v2", &[("GET", "/1.0/resources", None)]),
    (
        "certificate_update",
        &[
            ("PUT", "/1.0/certificates/nosuch", Some("{}")),
            ("PATCH", "/1.0/certificates/nosuch", Some("{}")),
        ],
    ),
    ("certificate_token", &[("POST", "/1.0/certificates", Some("{\"token\":true}"))]),
    // Probes that make nothing (this daemon runs in the host's network namespace): an empty
    // name, a missing network, an unmanaged interface. tests/network.rs builds real bridges.
    (
        "network",
        &[
            ("GET", "/1.0/networks", None),
            ("POST", "/1.0/networks", Some("{\"name\":\"\"}")),
            ("GET", "/1.0/networks/nosuch", None),
            ("PUT", "/1.0/networks/lo", Some("{}")),
            ("PATCH", "/1.0/networks/lo", Some("{}")),
            ("POST", "/1.0/networks/nosuch", Some("{\"name\":\"x\"}")),
            ("DELETE", "/1.0/networks/nosuch", None),
        ],
    ),
    ("network_leases", &[("GET", "/1.0/networks/nosuch/leases", None)]),
    ("network_state", &[("GET", "/1.0/networks/lo/state", None)]),
    ("network_hwaddr", &[("PATCH", "/1.0/networks/nosuch", Some("{}"))]),
    ("network_dhcp_expiry", &[("PATCH", "/1.0/networks/nosuch", Some("{}"))]),
    ("instance_nic_network", &[("PATCH", "/1.0/instances/nosuch", Some("{}"))]),
    ("remote_token_expiry", &[("PATCH", "/1.0", Some("{\"config\":{\"core.remote_token_expiry\":\"\"}}"))]),
    (
        "container_backup",
        // tests/backups.rs exercises them with containers.
        &[
            ("GET", "/1.0/instances/nosuch/backups", None),
            ("POST", "/1.0/instances/nosuch/backups", Some("{}")),
            ("GET", "/1.0/instances/nosuch/backups/b", None),
            ("POST", "/1.0/instances/nosuch/backups/b", Some("{\"name\":\"c\"}")),
            ("DELETE", "/1.0/instances/nosuch/backups/b", None),
            ("GET", "/1.0/instances/nosuch/backups/b/export", None),
        ],
    ),
    (
        "custom_volume_backup",
        // tests/volumes.rs exercises them with volumes.
        &[
            ("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/backups", None),
            ("POST", "/1.0/storage-pools/default/volumes/custom/nosuch/backups", Some("{}")),
            ("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/backups/b", None),
            ("POST", "/1.0/storage-pools/default/volumes/custom/nosuch/backups/b", Some("{\"name\":\"c\"}")),
            ("DELETE", "/1.0/storage-pools/default/volumes/custom/nosuch/backups/b", None),
            ("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/backups/b/export", None),
        ],
    ),
    ("backup_override_name", &[("POST", "/1.0/instances", Some("{}"))]),
    ("backup_compression", &[("PATCH", "/1.0", Some("{\"config\":{\"backups.compression_algorithm\":\"\"}}"))]),
    ("container_backup_override_pool", &[("POST", "/1.0/instances", Some("{}"))]),
    ("backup_compression_algorithm", &[("POST", "/1.0/instances/nosuch/backups", Some("{\"compression_algorithm\":\"xz\"}"))]),
    // Custom volume snapshots, copies and moves (tests/volumes.rs exercises them).
    (
        "storage_api_volume_snapshots",
        &[
            ("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots", None),
            ("POST", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots", Some("{}")),
            ("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots/s", None),
            ("PUT", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots/s", Some("{}")),
            ("POST", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots/s", Some("{\"name\":\"t\"}")),
            ("DELETE", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots/s", None),
        ],
    ),
    (
        "storage_api_local_volume_handling",
        &[
            (
                "POST",
                "/1.0/storage-pools/default/volumes/custom",
                Some("{\"name\":\"v\",\"source\":{\"type\":\"copy\",\"name\":\"nosuch\"}}"),
            ),
            ("POST", "/1.0/storage-pools/default/volumes/custom/nosuch", Some("{\"name\":\"v\",\"pool\":\"default\"}")),
        ],
    ),
    (
        "storage_api_remote_volume_handling",
        &[
            (
                "POST",
                "/1.0/storage-pools/default/volumes/custom",
                Some("{\"name\":\"v\",\"source\":{\"type\":\"migration\",\"mode\":\"pull\"}}"),
            ),
            ("POST", "/1.0/storage-pools/default/volumes/custom/nosuch", Some("{\"name\":\"v\",\"migration\":true}")),
        ],
    ),
    (
        "custom_volume_refresh",
        &[(
            "POST",
            "/1.0/storage-pools/default/volumes/custom",
            Some("{\"name\":\"v\",\"source\":{\"type\":\"copy\",\"name\":\"nosuch\",\"refresh\":true}}"),
        )],
    ),
    ("custom_volume_snapshot_expiry", &[("PUT", "/1.0/storage-pools/default/volumes/custom/nosuch/snapshots/s", Some("{}"))]),
    ("volume_snapshot_scheduling", &[("PATCH", "/1.0/storage-pools/default/volumes/custom/nosuch", Some("{}"))]),
    ("storage_volume_state", &[("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/state", None)]),
    ("storage_volume_state_total", &[("GET", "/1.0/storage-pools/default/volumes/custom/nosuch/state", None)]),
];

/// Extensions bivy must not claim while these requests are not served.
const NOT_BUILT: &[(&str, &[Probe])] = &[
    (
        "projects",
        &[
            ("GET", "/1.0/projects", None),
            ("POST", "/1.0/projects", Some("{}")),
        ],
    ),
    (
        "instance_bulk_state_change",
        &[("PUT", "/1.0/instances", Some("{}"))],
    ),
    ("clustering", &[("GET", "/1.0/cluster", None)]),
];

#[test]
fn api_extensions_match_the_routes() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let claimed = extensions(&d);
    let mut problems = Vec::new();
    for name in &claimed {
        match CLAIMS.iter().find(|(n, _)| n == name) {
            None => problems.push(format!("{name}: claimed, but no probe says what it needs")),
            Some((_, probes)) => {
                for (m, p, b) in probes.iter() {
                    if let Err(e) = served(&d, m, p, *b) {
                        problems.push(format!("{name}: claimed, but {e}"));
                    }
                }
            }
        }
    }
    for (name, probes) in NOT_BUILT {
        let all_served = probes.iter().all(|(m, p, b)| served(&d, m, p, *b).is_ok());
        if claimed.iter().any(|c| c == name) && !all_served {
            problems.push(format!("{name}: claimed, but its routes are not served"));
        }
        assert!(
            !all_served,
            "{name}: its routes are served now; move it to CLAIMS and claim it"
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The ones pylxd and lxc gate whole features on, explicitly.
    for name in ["projects", "clustering"] {
        assert!(!claimed.iter().any(|c| c == name), "{name} is claimed");
    }
}

#[test]
fn other_projects_and_targets_are_refused_with_nothing_done() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let (s, v) = call(
        &d,
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"zz4","source":{"type":"none"}}"#),
    );
    assert!(s == 202 || s == 200, "{s} {v}");
    d.wait_operation(&v);
    let (s, _) = call(&d, "POST", "/1.0/profiles", Some(r#"{"name":"p1"}"#));
    assert!(s == 201 || s == 200, "{s}");

    let refused: &[(&str, &str, Option<&str>)] = &[
        ("DELETE", "/1.0/instances/zz4?project=nosuch", None),
        ("GET", "/1.0/instances?project=nosuch", None),
        ("GET", "/1.0/instances/zz4?project=nosuch", None),
        (
            "PUT",
            "/1.0/instances/zz4/state?project=nosuch",
            Some(r#"{"action":"start"}"#),
        ),
        (
            "POST",
            "/1.0/instances/zz4?project=nosuch",
            Some(r#"{"name":"zz5"}"#),
        ),
        (
            "PATCH",
            "/1.0/instances/zz4?project=nosuch",
            Some(r#"{"description":"x"}"#),
        ),
        (
            "POST",
            "/1.0/instances?project=nosuch",
            Some(r#"{"name":"zz6","source":{"type":"none"}}"#),
        ),
        ("GET", "/1.0/profiles?project=x", None),
        ("DELETE", "/1.0/profiles/p1?project=x", None),
        ("GET", "/1.0/images?project=x", None),
        ("GET", "/1.0/operations?project=x", None),
        ("GET", "/1.0/storage-pools?project=x", None),
        ("GET", "/1.0/events?project=x", None),
        ("GET", "/1.0/warnings?project=x", None),
        ("GET", "/1.0/nosuch?project=x", None),
    ];
    for (m, p, b) in refused {
        let (s, v) = call(&d, m, p, *b);
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("Project not found")),
            "{m} {p}: {v}"
        );
        assert_eq!(v["type"], "error", "{v}");
    }
    // Nothing was done.
    let (s, v) = call(&d, "GET", "/1.0/instances/zz4", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["status"], "Stopped");
    assert_eq!(v["metadata"]["description"], "");
    assert_eq!(call(&d, "GET", "/1.0/instances/zz5", None).0, 404);
    assert_eq!(call(&d, "GET", "/1.0/instances/zz6", None).0, 404);
    assert_eq!(call(&d, "GET", "/1.0/profiles/p1", None).0, 200);

    // The one project, by name or implied, works.
    let (s, v) = call(&d, "GET", "/1.0/instances?project=default", None);
    assert_eq!(s, 200);
    assert_eq!(v["metadata"], serde_json::json!(["/1.0/instances/zz4"]));
    assert_eq!(
        call(&d, "GET", "/1.0/profiles/p1?project=default", None).0,
        200
    );
    // Server info is not project-scoped: a client learns there that projects are not handled.
    let (s, v) = call(&d, "GET", "/1.0?project=nosuch", None);
    assert_eq!(s, 200, "{v}");
    assert!(!v["metadata"]["api_extensions"]
        .as_array()
        .expect("list")
        .iter()
        .any(|e| e == "projects"));

    // A standalone server has no cluster members to target.
    for (m, p, b) in [
        ("GET", "/1.0/instances?target=node1", None),
        (
            "POST",
            "/1.0/instances?target=node1",
            Some(r#"{"name":"zz7","source":{"type":"none"}}"#),
        ),
        ("DELETE", "/1.0/instances/zz4?target=node1", None),
    ] {
        let (s, v) = call(&d, m, p, b);
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("Target only allowed when clustered")),
            "{m} {p}: {v}"
        );
    }
    assert_eq!(call(&d, "GET", "/1.0/instances/zz7", None).0, 404);
    assert_eq!(call(&d, "GET", "/1.0/instances/zz4", None).0, 200);
    let (s, v) = call(&d, "DELETE", "/1.0/instances/zz4?project=default", None);
    assert_eq!(s, 202, "{v}");
    d.wait_operation(&v);
    assert_eq!(call(&d, "GET", "/1.0/instances/zz4", None).0, 404);
}

#[test]
fn instance_create_needs_a_source_type() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    for body in ["{}", r#"{"name":"x"}"#, r#"{"name":"x","source":{}}"#] {
        let (s, v) = call(&d, "POST", "/1.0/instances", Some(body));
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"], "Unknown source type ", "{body}: {v}");
    }
    let (s, v) = call(
        &d,
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"x","source":{"type":"nonsense"}}"#),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("Unknown source type nonsense"))
    );
    let (s, v) = call(&d, "GET", "/1.0/instances", None);
    assert_eq!(s, 200);
    assert_eq!(v["metadata"], serde_json::json!([]), "nothing was created");
    // An explicit "none" is the empty instance.
    let (s, v) = call(
        &d,
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"x","source":{"type":"none"}}"#),
    );
    assert_eq!(s, 202, "{v}");
    d.wait_operation(&v);
    assert_eq!(call(&d, "GET", "/1.0/instances/x", None).0, 200);
}

fn raw(d: &Daemon, req: &[u8]) -> String {
    let mut s = UnixStream::connect(d.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The server may answer and close before reading all of an oversized request.
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_error_is_in_the_json_envelope() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let mut big_header = b"GET /1.0 HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 200 * 1024));
    big_header.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Found by the HTTP layer.
        (b"GET /1.0/instances/%00x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /1.0/instances/\0x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET /1.0/%zz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (b"GET  /1.0 HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /1.0 HTTP/9.9\r\n\r\n".to_vec(), 505),
        (b"GET /1.0 HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400),
        (big_header, 431),
        (b"POST /1.0/profiles HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), 400),
        (b"GET /1.0 HTTP/1.1\r\nExpect: tea\r\n\r\n".to_vec(), 417),
        // Found by the websocket handshake.
        (b"GET /1.0/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(), 400),
        // Found by the router and the handlers.
        (b"GET /2.0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 404),
        (b"BREW /1.0/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 405),
    ];
    for (req, status) in cases {
        let out = raw(&d, &req);
        let shown = String::from_utf8_lossy(&req[..req.len().min(80)]).into_owned();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{shown:?}: {out}"
        );
        assert!(
            out.to_ascii_lowercase()
                .contains("content-type: application/json\r\n"),
            "{shown:?}: {out}"
        );
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{shown:?}: {e}: {out}"));
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "error",
                "error_code",
                "metadata",
                "operation",
                "status",
                "status_code",
                "type"
            ],
            "{shown:?}: {out}"
        );
        assert_eq!(v["type"], "error");
        assert_eq!(v["error_code"], status);
        assert_eq!(v["status_code"], 0);
        assert_eq!(v["status"], "");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{out}");
    }
    // Still serving.
    assert_eq!(call(&d, "GET", "/1.0", None).0, 200);
}

#[test]
fn warnings_list_and_unbuilt_routes_are_501() {
    if !common::require_root() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    for path in [
        "/1.0/warnings",
        "/1.0/warnings?recursion=0",
        "/1.0/warnings?recursion=1",
    ] {
        let (s, v) = call(&d, "GET", path, None);
        assert_eq!(
            (s, &v["metadata"]),
            (200, &serde_json::json!([])),
            "{path}: {v}"
        );
        assert_eq!(v["type"], "sync");
    }
    let (s, v) = call(
        &d,
        "GET",
        "/1.0/warnings/e3b0c442-98fc-1c14-9afb-f4c8996fb924",
        None,
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("Warning not found")),
        "{v}"
    );
    assert_eq!(call(&d, "POST", "/1.0/warnings", Some("{}")).0, 405);

    for (m, p, what) in [
        ("PUT", "/1.0/instances", "PUT /1.0/instances"),
        (
            "POST",
            "/1.0/images/abc/export",
            "POST /1.0/images/{fingerprint}/export",
        ),
    ] {
        let (s, v) = call(&d, m, p, Some(r#"{"state":{"action":"stop"}}"#));
        assert_eq!(s, 501, "{m} {p}: {v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(
            err.starts_with("not supported yet: ") && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn running_container_reports_its_network_namespace() {
    if !common::lxc_prerequisites() {
        return;
    }
    let d = Daemon::start().expect("daemon");
    let l = Lxc::new(&d);
    l.import_busybox();
    l.ok(&["launch", "busybox", "n1"]);
    let lo = |d: &Daemon| {
        let (s, v) = call(d, "GET", "/1.0/instances/n1/state", None);
        assert_eq!(s, 200, "{v}");
        v["metadata"]["network"]["lo"].clone()
    };
    let before = lo(&d);
    assert_eq!(before["type"], "loopback", "{before}");
    assert_eq!(before["state"], "up", "{before}");
    assert_eq!(before["hwaddr"], "", "{before}");
    // The container's own lo, not the host's: the MTU as the container sees it.
    let (_, mtu) = l.sh(
        "n1",
        "cat /sys/class/net/lo/mtu 2>/dev/null || ip link show lo",
    );
    assert!(
        mtu.contains(&before["mtu"].to_string()),
        "{mtu} vs {before}"
    );
    let addrs = before["addresses"].as_array().expect("addresses");
    assert!(
        addrs.iter().any(|a| a["family"] == "inet"
            && a["address"] == "127.0.0.1"
            && a["netmask"] == "8"
            && a["scope"] == "local"),
        "{before}"
    );
    // Traffic inside the container moves its counters (and only its own).
    let (code, out) = l.sh("n1", "ping -c 3 -W 1 127.0.0.1");
    assert_eq!(code, 0, "{out}");
    let after = lo(&d);
    let delta =
        |k: &str| after["counters"][k].as_i64().unwrap() - before["counters"][k].as_i64().unwrap();
    assert!(delta("packets_received") >= 6, "{before} -> {after}");
    assert!(delta("bytes_sent") >= 6 * 84, "{before} -> {after}");
    // A stopped container has no network to report.
    l.ok(&["stop", "n1", "--force"]);
    let (_, v) = call(&d, "GET", "/1.0/instances/n1/state", None);
    assert_eq!(v["metadata"]["network"], Value::Null, "{v}");
    l.ok(&["delete", "n1"]);
}
