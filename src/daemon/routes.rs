//! The endpoint table: path -> handler. Handlers parse the request, call the core and render;
//! every error becomes LXD's error envelope in one place (`response::error`).

use super::access::{self, Caller};
use super::endpoints::{self, instances, storage, volumes};
use super::response::{self, Error, Result};
use super::{resources, Daemon};
use crate::http::{Request, Response};

/// Entry point for every request on the unix socket (trusted).
pub fn handle(d: &Daemon, req: &mut Request) -> Response {
    handle_as(d, req, &Caller::Local)
}

/// Entry point for every request, from `caller`.
pub fn handle_as(d: &Daemon, req: &mut Request, caller: &Caller) -> Response {
    match route(d, req, caller) {
        Ok(r) => r,
        Err(e) => response::error(&e),
    }
}

fn not_allowed(method: &str) -> Error {
    Error::MethodNotAllowed(format!("method {method} not allowed"))
}

fn route(d: &Daemon, req: &mut Request, caller: &Caller) -> Result<Response> {
    let trusted = caller.trusted(d);
    // An untrusted caller reaches only the routes the table opens to it (see `access`).
    if !trusted && !access::untrusted_may(&req.method, &req.path) {
        return Err(Error::Forbidden("not authorized".into()));
    }
    let path = req.path.trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method.clone();
    let m = method.as_str();
    if segs.is_empty() || segs[0].is_empty() {
        return match m {
            "GET" | "HEAD" => Ok(response::sync(&vec!["/1.0"])),
            _ => Err(not_allowed(m)),
        };
    }
    if let ["internal", "recover", step] = segs.as_slice() {
        // LXD's `lxd recover` endpoints (trusted callers only, as every non-public route).
        return match (m, *step) {
            ("POST", "validate") => endpoints::server::recover_validate(d, req),
            ("POST", "import") => endpoints::server::recover_import(d, req),
            (_, "validate" | "import") => Err(not_allowed(m)),
            _ => Err(Error::NotFound("not found".into())),
        };
    }
    if segs[0] != "1.0" {
        return Err(Error::NotFound("not found".into()));
    }
    let rest = &segs[1..];
    // Server info is not project-scoped: clients read `api_extensions` there to learn that the
    // server has no projects (pylxd's "Remote server doesn't handle projects", lxc likewise).
    if !(rest.is_empty() && matches!(m, "GET" | "HEAD")) {
        check_project(req)?;
    }
    check_target(req)?;
    match rest {
        [] => match m {
            "GET" | "HEAD" => endpoints::server::server_get(d, trusted),
            "PUT" => endpoints::server::server_put(d, req, false),
            "PATCH" => endpoints::server::server_put(d, req, true),
            _ => Err(not_allowed(m)),
        },
        ["events"] => endpoints::operations::events(d, req),
        ["operations"] => match m {
            "GET" => endpoints::operations::operations_list(d, req),
            _ => Err(not_allowed(m)),
        },
        ["operations", id] => match m {
            "GET" => endpoints::operations::operation_get(d, req, id, trusted),
            "DELETE" => endpoints::operations::operation_cancel(d, id),
            _ => Err(not_allowed(m)),
        },
        ["operations", id, "wait"] => match m {
            "GET" => endpoints::operations::operation_wait(d, req, id, trusted),
            _ => Err(not_allowed(m)),
        },
        ["operations", id, "websocket"] => match m {
            "GET" => endpoints::operations::operation_websocket(d, req, id, trusted),
            _ => Err(not_allowed(m)),
        },
        ["instances" | "containers"] => match m {
            "GET" => instances::list(d, req),
            // LXD: a binary body is a backup tarball to restore.
            "POST"
                if req
                    .header("Content-Type")
                    .is_some_and(|c| c.starts_with("application/octet-stream")) =>
            {
                endpoints::backups::import(d, req)
            }
            "POST" => endpoints::instance_create::create(d, req),
            "PUT" => Err(Error::not_yet(
                "changing the state of all instances at once (PUT /1.0/instances)",
            )),
            _ => Err(not_allowed(m)),
        },
        ["instances" | "containers", name, "exec"] if m == "POST" => {
            endpoints::exec::exec(d, req, name)
        }
        ["instances" | "containers", name, "console"] if m == "POST" => {
            endpoints::exec::console(d, req, name)
        }
        ["instances" | "containers", name, "files"]
            if matches!(m, "GET" | "HEAD" | "POST" | "DELETE") =>
        {
            let rec = crate::instance::view::record(d, name)?;
            endpoints::files::handle(d, req, name, &rec)
        }
        ["instances" | "containers", name, sub @ ("logs" | "metadata" | "console"), rest @ ..]
            if !(sub == &"console" && m != "GET") =>
        {
            use endpoints::instance_meta as im;
            match (*sub, rest, m) {
                ("logs", [], "GET") => im::logs_list(d, name),
                ("logs", [file], "GET") => im::log_get(d, name, file),
                ("logs", [file], "DELETE") => im::log_delete(d, name, file),
                ("console", [], "GET") => im::log_get(d, name, "console.log"),
                ("metadata", [], "GET") => im::metadata_get(d, name),
                ("metadata", [], "PUT") => im::metadata_put(d, req, name, false),
                ("metadata", [], "PATCH") => im::metadata_put(d, req, name, true),
                ("metadata", ["templates"], "GET") => im::templates(d, req, name),
                ("metadata", ["templates"], "POST" | "PUT") => im::template_put(d, req, name),
                ("metadata", ["templates"], "DELETE") => im::template_delete(d, req, name),
                ("logs" | "metadata", [], _) => Err(not_allowed(m)),
                _ => Err(Error::NotFound("not found".into())),
            }
        }
        ["instances" | "containers", name, "backups", rest @ ..] => {
            let name = name.to_string();
            endpoints::backups::route(d, req, &name, rest)
        }
        ["instances" | "containers", name, "snapshots", rest @ ..] => {
            let name = name.to_string();
            endpoints::snapshots::route(d, req, &name, rest)
        }
        ["instances" | "containers", name, sub @ ..] => {
            let name = name.to_string();
            instances::route(d, req, &name, sub)
        }
        ["profiles"] => match m {
            "GET" => endpoints::profiles::profiles_list(d, req),
            "POST" => endpoints::profiles::profile_create(d, req),
            _ => Err(not_allowed(m)),
        },
        ["profiles", name] => match m {
            "GET" => endpoints::profiles::profile_get(d, name),
            "PUT" => endpoints::profiles::profile_put(d, req, name, false),
            "PATCH" => endpoints::profiles::profile_put(d, req, name, true),
            "POST" => endpoints::profiles::profile_rename(d, req, name),
            "DELETE" => endpoints::profiles::profile_delete(d, name),
            _ => Err(not_allowed(m)),
        },
        ["images"] => match m {
            "GET" => endpoints::images::images_list(d, req, trusted),
            "POST" => endpoints::images::image_create(d, req),
            _ => Err(not_allowed(m)),
        },
        ["images", "aliases"] => match m {
            "GET" => endpoints::images::aliases_list(d, req, trusted),
            "POST" => endpoints::images::alias_create(d, req),
            _ => Err(not_allowed(m)),
        },
        // An alias's name is the rest of the path: it may have slashes (`debian/12`).
        ["images", "aliases", rest @ ..] => {
            let name = &rest.join("/");
            match m {
                "GET" => endpoints::images::alias_get(d, name, trusted),
                "PUT" => endpoints::images::alias_put(d, req, name),
                "PATCH" => endpoints::images::alias_put(d, req, name),
                "POST" => endpoints::images::alias_rename(d, req, name),
                "DELETE" => endpoints::images::alias_delete(d, name),
                _ => Err(not_allowed(m)),
            }
        }
        ["images", fp] => match m {
            "GET" => endpoints::images::image_get(d, req, fp, trusted),
            "PUT" => endpoints::images::image_put(d, req, fp, false),
            "PATCH" => endpoints::images::image_put(d, req, fp, true),
            "DELETE" => endpoints::images::image_delete(d, fp),
            _ => Err(not_allowed(m)),
        },
        ["images", fp, "export"] => match m {
            "GET" => endpoints::images::image_export(d, req, fp, trusted),
            "POST" => Err(Error::not_yet(
                "pushing an image to another server (POST /1.0/images/{fingerprint}/export)",
            )),
            _ => Err(not_allowed(m)),
        },
        ["images", fp, "secret"] => match m {
            "POST" => endpoints::images::image_secret(d, fp),
            _ => Err(not_allowed(m)),
        },
        ["images", fp, "refresh"] => match m {
            "POST" => endpoints::images::image_refresh(d, fp),
            _ => Err(not_allowed(m)),
        },
        ["resources"] => match m {
            "GET" => resources::get(),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools"] => match m {
            "GET" => storage::list(d, req),
            "POST" => storage::create(d, req),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name] => match m {
            "GET" => storage::get(d, name),
            "PUT" => storage::put(d, req, name, false),
            "PATCH" => storage::put(d, req, name, true),
            "DELETE" => storage::delete(d, name),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "resources"] => match m {
            "GET" => storage::resources(d, name),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes"] | ["storage-pools", name, "volumes", "custom"]
            if m == "POST"
                && req
                    .header("Content-Type")
                    .is_some_and(|c| c.starts_with("application/octet-stream")) =>
        {
            endpoints::volume_backups::import(d, req, name)
        }
        ["storage-pools", name, "volumes"] => match m {
            "GET" => volumes::list(d, req, name, None),
            "POST" => volumes::create(d, req, name, None),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes", kind] => match m {
            "GET" => volumes::list(d, req, name, Some(kind)),
            "POST" => volumes::create(d, req, name, Some(kind)),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes", kind, vol] => match m {
            "GET" => volumes::get(d, name, kind, vol),
            "PUT" => volumes::put(d, req, name, kind, vol, false),
            "PATCH" => volumes::put(d, req, name, kind, vol, true),
            "POST" => volumes::rename(d, req, name, kind, vol),
            "DELETE" => volumes::delete(d, name, kind, vol),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes", kind, vol, "snapshots"] => match m {
            "GET" => volumes::snapshots(d, req, name, kind, vol),
            "POST" => volumes::snapshot_create(d, req, name, kind, vol),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes", kind, vol, "snapshots", snap] => match m {
            "GET" => volumes::snapshot_get(d, name, kind, vol, snap),
            "PUT" => volumes::snapshot_put(d, req, name, kind, vol, snap, false),
            "PATCH" => volumes::snapshot_put(d, req, name, kind, vol, snap, true),
            "POST" => volumes::snapshot_rename(d, req, name, kind, vol, snap),
            "DELETE" => volumes::snapshot_delete(d, name, kind, vol, snap),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes", kind, vol, "state"] => match m {
            "GET" => volumes::state(d, name, kind, vol),
            _ => Err(not_allowed(m)),
        },
        ["storage-pools", name, "volumes", kind, vol, "backups", rest @ ..] => {
            endpoints::volume_backups::route(d, req, name, kind, vol, rest)
        }
        ["networks"] => match m {
            "GET" => endpoints::networks::list(d, req),
            "POST" => endpoints::networks::create(d, req),
            _ => Err(not_allowed(m)),
        },
        ["networks", name] => match m {
            "GET" => endpoints::networks::get(d, name),
            "PUT" => endpoints::networks::put(d, req, name, false),
            "PATCH" => endpoints::networks::put(d, req, name, true),
            "POST" => endpoints::networks::rename(d, req, name),
            "DELETE" => endpoints::networks::delete(d, name),
            _ => Err(not_allowed(m)),
        },
        ["networks", name, "leases"] => match m {
            "GET" => endpoints::networks::leases(d, name),
            _ => Err(not_allowed(m)),
        },
        ["networks", name, "state"] => match m {
            "GET" => endpoints::networks::state(d, name),
            _ => Err(not_allowed(m)),
        },
        // bivy records no warnings, so the list is honestly empty and no warning exists.
        ["warnings"] => match m {
            "GET" => Ok(response::sync(&Vec::<String>::new())),
            _ => Err(not_allowed(m)),
        },
        ["warnings", _] => match m {
            "GET" | "PUT" | "PATCH" | "DELETE" => Err(Error::NotFound("Warning not found".into())),
            _ => Err(not_allowed(m)),
        },
        ["certificates"] => match m {
            "GET" => endpoints::certificates::list(d, req),
            "POST" => endpoints::certificates::create(d, req, caller),
            _ => Err(not_allowed(m)),
        },
        ["certificates", fp] => match m {
            "GET" => endpoints::certificates::get(d, fp),
            "PUT" => endpoints::certificates::put(d, req, fp, false),
            "PATCH" => endpoints::certificates::put(d, req, fp, true),
            "DELETE" => endpoints::certificates::delete(d, fp),
            _ => Err(not_allowed(m)),
        },
        _ => Err(Error::NotFound("not found".into())),
    }
}

/// bivy has one project, `default`. Any other `?project=` is refused before anything is done,
/// so a client set up for another project never reads or changes the default project's objects.
fn check_project(req: &Request) -> Result<()> {
    match req.query("project") {
        None | Some("" | "default") => Ok(()),
        Some(_) => Err(Error::NotFound("Project not found".into())),
    }
}

/// `?target=` names a cluster member; a standalone server has none (LXD's wording). `none` is
/// the `location` a standalone server gives its volumes, which `lxc storage volume copy` sends
/// back as the target.
fn check_target(req: &Request) -> Result<()> {
    match req.query("target") {
        None | Some("" | "none") => Ok(()),
        Some(_) => Err(Error::BadRequest(
            "Target only allowed when clustered".into(),
        )),
    }
}
