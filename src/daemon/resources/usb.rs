//! USB devices and their interfaces, from `/sys/bus/usb/devices`.

use std::path::Path;

use super::sysfs::{list, Attrs, Device, IdDbs};
use crate::api::resources::*;

pub(super) fn usb(root: &Path, release: &str, ids: &IdDbs) -> ResourcesUsb {
    let base = root.join("sys/bus/usb/devices");
    let names = list(&base);
    let mut out = ResourcesUsb::default();
    for name in &names {
        // Interfaces are `dev:cfg.if`; root hubs are `usbN`.
        if name.contains(':') || name.starts_with("usb") {
            continue;
        }
        let dev = base.join(name);
        let a = Attrs(&dev);
        let vendor_id = a.string("idVendor");
        let product_id = a.string("idProduct");
        let (mut vendor, mut product) = IdDbs::names(&ids.usb, &vendor_id, &product_id);
        if vendor.is_empty() {
            vendor = a.string("manufacturer");
        }
        if product.is_empty() {
            product = a.string("product");
        }
        let prefix = format!("{name}:");
        let interfaces = names
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .map(|n| {
                let i = base.join(n);
                let (a, d) = (Attrs(&i), Device::read(&i, release));
                ResourcesUsbDeviceInterface {
                    class_id: a.hex("bInterfaceClass").unwrap_or(0),
                    subclass_id: a.hex("bInterfaceSubClass").unwrap_or(0),
                    number: a.hex("bInterfaceNumber").unwrap_or(0),
                    driver: d.driver,
                    driver_version: d.driver_version,
                    ..Default::default()
                }
            })
            .collect();
        out.devices.push(ResourcesUsbDevice {
            bus_address: a.u64("busnum").unwrap_or(0),
            device_address: a.u64("devnum").unwrap_or(0),
            interfaces,
            vendor,
            vendor_id,
            product,
            product_id,
            speed: a.str("speed").and_then(|s| s.parse().ok()).unwrap_or(0.0),
        });
    }
    out.total = out.devices.len() as u64;
    out
}
