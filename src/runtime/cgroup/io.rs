//! Block I/O limits: a container's [`IoLimit`]s (bytes and operations per second per device,
//! resolved from its disk devices by `instance::devices`) written to the v1 `blkio.throttle.*`
//! files or to cgroup2's `io.max`, replacing exactly what was throttled before.

use super::{read, write, Cgroup};
use crate::runtime::{Error, IoLimit, Result};

impl Cgroup {
    /// Throttle block I/O to exactly `io` (devices throttled before and not in `io` are
    /// unthrottled).
    pub(super) fn set_io(&self, io: &[IoLimit]) -> Result<()> {
        let (d, v2) = if let Some(d) = self.v1_dir("blkio") {
            (d, false)
        } else if let Some(x) = self.ctrl("io") {
            x
        } else if io.is_empty() {
            return Ok(());
        } else {
            return Err(Error(
                "cgroup: disk limits set but no blkio/io controller is available".into(),
            ));
        };
        // The devices throttled now, from the files' "MAJ:MIN ..." lines.
        let throttled = |file: &str| -> Result<Vec<(u32, u32)>> {
            let p = d.join(file);
            if !p.exists() {
                return Ok(Vec::new());
            }
            Ok(read(&p)?
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_whitespace().next()?.split_once(':')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect())
        };
        if v2 {
            if io.iter().any(|l| {
                l.read_bps.is_some()
                    || l.write_bps.is_some()
                    || l.read_iops.is_some()
                    || l.write_iops.is_some()
            }) && !d.join("io.max").exists()
            {
                return Err(Error(format!("cgroup: no io.max in {}", d.display())));
            }
            let v = |x: Option<u64>| x.map_or("max".to_string(), |n| n.to_string());
            for (ma, mi) in throttled("io.max")? {
                if !io.iter().any(|l| (l.major, l.minor) == (ma, mi)) {
                    write(
                        &d.join("io.max"),
                        &format!("{ma}:{mi} rbps=max wbps=max riops=max wiops=max"),
                    )?;
                }
            }
            for l in io {
                write(
                    &d.join("io.max"),
                    &format!(
                        "{}:{} rbps={} wbps={} riops={} wiops={}",
                        l.major,
                        l.minor,
                        v(l.read_bps),
                        v(l.write_bps),
                        v(l.read_iops),
                        v(l.write_iops)
                    ),
                )?;
            }
            return Ok(());
        }
        type Field = fn(&IoLimit) -> Option<u64>;
        let files: [(&str, Field); 4] = [
            ("blkio.throttle.read_bps_device", |l| l.read_bps),
            ("blkio.throttle.write_bps_device", |l| l.write_bps),
            ("blkio.throttle.read_iops_device", |l| l.read_iops),
            ("blkio.throttle.write_iops_device", |l| l.write_iops),
        ];
        for (file, field) in files {
            let p = d.join(file);
            // 0 removes a device's rule.
            for (ma, mi) in throttled(file)? {
                if !io
                    .iter()
                    .any(|l| (l.major, l.minor) == (ma, mi) && field(l).is_some())
                {
                    write(&p, &format!("{ma}:{mi} 0"))?;
                }
            }
            for l in io {
                if let Some(n) = field(l) {
                    write(&p, &format!("{}:{} {n}", l.major, l.minor))?;
                }
            }
        }
        Ok(())
    }
}
